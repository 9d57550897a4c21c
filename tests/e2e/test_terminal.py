"""End to end: a terminal in a sandbox over a WebSocket through the API."""

from __future__ import annotations

import json
import socket
import ssl

import pytest
import wsproto
import wsproto.events as ws

from tests.e2e.appliance import DOMAIN, Appliance
from tests.e2e.helpers import create

pytestmark = pytest.mark.podman


class WsClient:
    def __init__(self, app: Appliance, target: str, headers: list[tuple[str, str]]) -> None:
        host = f"api.{DOMAIN}"
        raw = socket.create_connection(("127.0.0.1", app.port), timeout=15)
        self.sock = ssl.create_default_context(cafile=str(app.ca)).wrap_socket(raw, server_hostname=host)
        self.conn = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.sock.sendall(self.conn.send(ws.Request(host=f"{host}:{app.port}", target=target, extra_headers=headers)))
        self.pending: list[ws.Event] = []

    def event(self) -> ws.Event:
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError("connection closed")
            self.conn.receive_data(data)
            self.pending.extend(self.conn.events())
        return self.pending.pop(0)

    def send(self, message: str | bytes) -> None:
        self.sock.sendall(self.conn.send(ws.Message(data=message)))


def test_terminal_over_websocket(appliance: Appliance) -> None:
    with appliance.client() as api:
        sid = create(appliance, api)["sandbox_id"]
    term = WsClient(appliance, f"/v1/sandboxes/{sid}/terminal?cols=100&rows=30", [("X-API-KEY", appliance.api_key)])
    assert isinstance(term.event(), ws.AcceptConnection)
    start = term.event()
    assert isinstance(start, ws.TextMessage) and json.loads(start.data)["type"] == "start"
    output = bytearray()

    def read_until(needle: bytes) -> dict[str, object] | None:
        """Collect output until `needle` shows (or the shell exits: return its exit message)."""
        while needle not in output:
            event = term.event()
            if isinstance(event, ws.BytesMessage):
                output.extend(event.data)
            elif isinstance(event, ws.TextMessage):
                message: dict[str, object] = json.loads(event.data)
                return message
            elif isinstance(event, ws.CloseConnection):
                raise AssertionError(f"closed before {needle!r}: {bytes(output)!r}")
        return None

    term.send(b"stty size; echo marker-$((6*7))\n")
    assert read_until(b"marker-42\r\n") is None  # the shell ran the line before the resize is sent
    term.send(json.dumps({"type": "resize", "cols": 120, "rows": 40}))
    term.send(json.dumps({"type": "input", "data": "stty size; exit 4\n"}))
    exit_message = read_until(b"\x00never")
    text = output.decode(errors="replace")
    assert "marker-42" in text and "30 100" in text and "40 120" in text
    assert exit_message == {"type": "exit", "exit_code": 4, "status": "exit status 4"}


def test_terminal_refuses_without_a_key(appliance: Appliance) -> None:
    with appliance.client() as api:
        sid = create(appliance, api)["sandbox_id"]
    term = WsClient(appliance, f"/v1/sandboxes/{sid}/terminal", [])
    refused = term.event()
    assert isinstance(refused, ws.RejectConnection) and refused.status_code == 403
