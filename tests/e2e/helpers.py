"""Small helpers shared by the end-to-end tests."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import wsproto
import wsproto.events as ws

from tests.e2e.appliance import DOMAIN, Appliance, podman

ASSETS = Path(__file__).parent / "assets"


def create(app: Appliance, client: httpx.Client, **body: Any) -> dict[str, Any]:
    resp = client.post(f"{app.api_url}/sandboxes", json=body)
    assert resp.status_code == 201, resp.text
    data: dict[str, Any] = resp.json()["data"]
    return data


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def container_name(sandbox_id: str) -> str:
    return f"scalebox-{sandbox_id}"


def start_in_sandbox(sandbox_id: str, *command: str) -> None:
    podman("exec", "-d", container_name(sandbox_id), *command)


def copy_into(sandbox_id: str, asset: str, dest: str) -> None:
    podman("cp", str(ASSETS / asset), f"{container_name(sandbox_id)}:{dest}")


def wait_port(app: Appliance, client: httpx.Client, sandbox_id: str, port: int) -> None:
    """Wait until something inside answers on `port` (the gateway stops saying 502)."""

    def up() -> bool:
        return client.get(app.url(f"{port}-{sandbox_id}"), headers={"Connection": "close"}).status_code != 502

    wait_for(up, 15, f"port {port} in {sandbox_id}")


def websocket_echo(
    app: Appliance, host_label: str, message: str, *, tls: bool = True, headers: list[tuple[str, str]] | None = None
) -> str:
    """Open a WebSocket through the gateway, send one text message, return the echo."""
    host = f"{host_label}.{DOMAIN}"
    raw = socket.create_connection(("127.0.0.1", app.port), timeout=10)
    sock: socket.socket = raw
    if tls:
        ctx = ssl.create_default_context(cafile=str(app.ca))
        sock = ctx.wrap_socket(raw, server_hostname=host)
    conn = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    with sock:
        extra = [(k.encode(), v.encode()) for k, v in headers or []]
        request = ws.Request(host=f"{host}:{app.port}", target="/", extra_headers=extra)
        sock.sendall(conn.send(request))
        reply = ""
        accepted = False
        while True:
            data = sock.recv(65536)
            if not data:
                raise AssertionError("connection closed before the echo arrived")
            conn.receive_data(data)
            for event in conn.events():
                if isinstance(event, ws.AcceptConnection):
                    accepted = True
                    sock.sendall(conn.send(ws.Message(data=message)))
                elif isinstance(event, ws.RejectConnection):
                    raise AssertionError(f"upgrade rejected with {event.status_code}")
                elif isinstance(event, ws.TextMessage):
                    reply += event.data
                    if event.message_finished:
                        assert accepted
                        sock.sendall(conn.send(ws.CloseConnection(code=1000)))
                        return reply
