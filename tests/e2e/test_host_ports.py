"""Plain TCP host ports in a real appliance: a tcp port declared with `host_port` is
reached with a plain socket on the host, and the host port goes with the port or the sandbox."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable

import pytest

from tests.e2e.appliance import DOMAIN, Appliance
from tests.e2e.helpers import copy_into, create, start_in_sandbox, wait_for

pytestmark = pytest.mark.podman

SPAN = 3


def _free_range(count: int) -> int:
    """The first of `count` consecutive ports free on every interface (v4 and v6) now,
    so this appliance's host port range clashes with nothing already running."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("0.0.0.0", 0))
            base = int(probe.getsockname()[1])
        if base + count > 65535:
            continue
        with contextlib.ExitStack() as held:
            try:
                for port in range(base, base + count):
                    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
                        s = held.enter_context(socket.socket(family, socket.SOCK_STREAM))
                        if family == socket.AF_INET6:
                            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                        s.bind((host, port))
            except OSError:
                continue
        return base
    raise RuntimeError("no run of free ports")


def _echo(host: str, port: int, message: bytes) -> bytes | None:
    """What a plain TCP client gets back for `message`; None when nothing accepts."""
    try:
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(message)
            got = b""
            while len(got) < len(b"echo:" + message):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                got += chunk
            return got
    except OSError:
        return None


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_a_host_port_forwards_plain_tcp_and_is_released_with_its_port_and_sandbox(
    new_appliance: Callable[[], Appliance], monkeypatch: pytest.MonkeyPatch
) -> None:
    low = _free_range(SPAN)
    high = low + SPAN - 1
    monkeypatch.setenv("SCALEBOX_HOST_PORTS", f"{low}-{high}")
    app = new_appliance()
    with app.client() as api:
        sbx = create(app, api, custom_ports=[{"port": 7000, "name": "echo", "protocol": "tcp", "host_port": True}])
        sid = sbx["sandbox_id"]
        [port] = api.get(f"{app.api_url}/sandboxes/{sid}/ports").json()["data"]["ports"]
        host_port = port["host_port"]
        assert low <= host_port <= high and port["host_address"] == f"{DOMAIN}:{host_port}"

        copy_into(sid, "tcp_services.py", "/tmp/tcp_services.py")
        start_in_sandbox(sid, "python3", "/tmp/tcp_services.py", "echo", "7000")
        start_in_sandbox(sid, "python3", "/tmp/tcp_services.py", "echo", "7001")
        wait_for(lambda: _echo("127.0.0.1", host_port, b"probe") == b"echo:probe", 20, "the echo through the host port")
        # Plain bytes, no TLS, on each address the gateway listens on.
        assert _echo("127.0.0.1", host_port, b"hello") == b"echo:hello"
        assert _echo("::1", host_port, b"hello v6") == b"echo:hello v6"

        # A port declared on the running sandbox, asking for a host port by number...
        wanted = next(p for p in range(low, high + 1) if p != host_port)
        added = api.post(
            f"{app.api_url}/sandboxes/{sid}/ports",
            json={"port": 7001, "name": "second", "protocol": "tcp", "host_port": wanted},
        )
        assert added.status_code == 201, added.text
        assert added.json()["data"]["host_port"] == wanted
        wait_for(lambda: _echo("127.0.0.1", wanted, b"two") == b"echo:two", 10, "the second host port")
        # ...which another sandbox may not have while this one holds it.
        taken = api.post(
            f"{app.api_url}/sandboxes",
            json={"custom_ports": [{"port": 7000, "protocol": "tcp", "host_port": wanted}]},
        )
        assert taken.status_code == 400 and taken.json()["code"] == "host_port_taken"
        # Undeclared: the host port stops accepting.
        assert api.delete(f"{app.api_url}/sandboxes/{sid}/ports/7001").status_code == 200
        wait_for(lambda: _refused(wanted), 10, "the undeclared host port to close")

        # A connection held open when the sandbox goes is ended with it.
        held = socket.create_connection(("127.0.0.1", host_port), timeout=10)
        held.sendall(b"held")
        assert held.recv(100) == b"echo:held"
        assert api.delete(f"{app.api_url}/sandboxes/{sid}").status_code == 202
        wait_for(lambda: _refused(host_port), 10, "the host port to close with the sandbox")
        with held, contextlib.suppress(ConnectionResetError):  # a reset is as ended as a close
            assert held.recv(100) == b""

    lines = [e for e in app.events("gateway.connection") if e.get("mode") == "host_port"]
    ok = [e for e in lines if e["outcome"] == "ok" and e["host_port"] == host_port]
    assert ok and all(e["sandbox"] == sid and e["port"] == 7000 for e in ok)
    assert any(e["outcome"] == "host_port_released" and e.get("bytes_out") == len(b"echo:held") for e in lines)
    assert app.events("gateway.host_port_failed") == []
