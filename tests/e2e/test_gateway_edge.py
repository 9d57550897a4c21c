"""The gateway's edge in a real appliance: certificate reload on SIGHUP in every gateway
process, and SNI/Host checks with real TLS clients."""

from __future__ import annotations

import http.client
import signal
import socket
import ssl
from collections.abc import Callable

import pytest
from cryptography import x509

from gateway.tls.certs import ensure_certificates
from tests.e2e.appliance import DOMAIN, Appliance
from tests.e2e.helpers import wait_for

pytestmark = pytest.mark.podman

API_HOST = f"api.{DOMAIN}"


def _serial(der: bytes | None) -> int:
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _new_connection_serial(app: Appliance) -> int:
    ctx = ssl.create_default_context(cafile=str(app.ca))
    with (
        socket.create_connection(("127.0.0.1", app.port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=API_HOST) as tls,
    ):
        return _serial(tls.getpeercert(binary_form=True))


def _keep_alive(app: Appliance) -> http.client.HTTPSConnection:
    ctx = ssl.create_default_context(cafile=str(app.ca))
    return http.client.HTTPSConnection(API_HOST, app.port, context=ctx, timeout=10)


def _get(conn: http.client.HTTPSConnection, app: Appliance, path: str = "/v1/sandboxes") -> int:
    conn.request("GET", path, headers={"X-API-KEY": app.api_key})
    response = conn.getresponse()
    response.read()
    return response.status


def test_sighup_reloads_the_certificate_in_every_process_and_keeps_open_connections(
    new_appliance: Callable[[], Appliance], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCALEBOX_GATEWAY_PROCESSES", "3")
    app = new_appliance()
    wait_for(lambda: len(app.events("gateway.worker_ready")) == 2, 20, "the gateway workers to start")
    old = _new_connection_serial(app)
    kept = _keep_alive(app)
    assert _get(kept, app) == 200
    assert kept.sock is not None
    kept_socket = kept.sock
    assert _serial(kept_socket.getpeercert(binary_form=True)) == old

    # A new leaf from the appliance's own CA, written where it reads its certificate.
    tls_dir = app.data_dir / "tls"
    (tls_dir / "server.pem").unlink()
    (tls_dir / "server-key.pem").unlink()
    ensure_certificates(tls_dir, DOMAIN)
    new = x509.load_pem_x509_certificate((tls_dir / "server.pem").read_bytes()).serial_number
    assert new != old

    assert app.process is not None
    app.process.send_signal(signal.SIGHUP)
    wait_for(lambda: len(app.events("gateway.tls_reloaded")) == 3, 20, "every gateway process to reload")
    assert sorted(e["worker"] for e in app.events("gateway.tls_reloaded")) == [0, 1, 2]

    # New connections, whichever process accepts each, see the new certificate...
    assert {_new_connection_serial(app) for _ in range(30)} == {new}
    # ...while the connection opened before goes on, on the same socket, with the old one.
    assert _get(kept, app) == 200
    assert kept.sock is kept_socket
    assert _serial(kept_socket.getpeercert(binary_form=True)) == old
    kept.close()
    # No process died of the signal.
    assert app.events("gateway.worker_died") == []
    assert app.process.poll() is None


def _raw_request(app: Appliance, *, sni: str | None, host: str) -> int:
    ctx = ssl.create_default_context(cafile=str(app.ca))
    if sni is None:
        ctx.check_hostname = False
    with (
        socket.create_connection(("127.0.0.1", app.port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=sni) as tls,
    ):
        request = f"GET /v1/sandboxes HTTP/1.1\r\nHost: {host}\r\nX-API-KEY: {app.api_key}\r\nConnection: close\r\n\r\n"
        tls.sendall(request.encode())
        received = b""
        while chunk := tls.recv(65536):
            received += chunk
    return int(received.split(b" ", 2)[1])


def test_sni_and_host_must_agree_and_no_sni_reaches_only_what_the_certificate_covers(appliance: Appliance) -> None:
    port = appliance.port
    assert _raw_request(appliance, sni=API_HOST, host=f"{API_HOST}:{port}") == 200
    # a sandbox host on a connection opened for the API
    assert _raw_request(appliance, sni=API_HOST, host=f"sbx-nope1234.{DOMAIN}:{port}") == 421
    # no SNI (curl to an IP): the API host is in the certificate, another domain is not
    assert _raw_request(appliance, sni=None, host=f"{API_HOST}:{port}") == 200
    assert _raw_request(appliance, sni=None, host="evil.example") == 421
    lines = [e for e in appliance.events("gateway.request") if e["status"] == 421]
    assert {e["outcome"] for e in lines} == {"misdirected_request"}
