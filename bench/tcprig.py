"""The tcp rig: one raw TCP service in a sandbox, reached directly, through nginx's
stream module and through the gateway's tcp and tls ports.

One sandbox, created with port 9000 declared `tcp` and 9443 declared `tls`, runs
`bench/tcpupstream.py` on both: plaintext on 9000, and on 9443 TLS ended by the
service itself, with a certificate of its own from a CA made here (trustme), as
a sandbox that holds its own certificate would. The targets (`bench.client.Target`,
its host the SNI name):

    direct tcp    <container-ip>:9000, plaintext          (the baseline: no proxy, no TLS)
    nginx tcp     nginx stream, TLS ended by nginx        (the gateway's certificate)
    gateway tcp   the gateway port, SNI 9000-<id>.sbx.localhost, TLS ended by the gateway
    direct tls    <container-ip>:9443, TLS ended by the service   (the baseline: no proxy)
    nginx tls     nginx stream, `ssl_preread` routes the SNI 9443-<id>... and passes it through
    gateway tls   the gateway port, SNI 9443-<id>.sbx.localhost, passed through

The gateway runs as the bench's appliance runs it (one process per core, each
taking its share of the connections); nginx with `worker_processes auto`.
Everything it starts (the sandbox, nginx) is gone when the `with` block ends.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import trustme

from bench.client import Target
from bench.env import DOMAIN, BenchAppliance, podman
from bench.nginx import MISSING, STREAM_MISSING, NginxStream, nginx_path, nginx_stream
from bench.rig import Rig, container_ip
from tests.e2e.appliance import free_port

TCP_PORT = 9000
TLS_PORT = 9443
UPSTREAM_SOURCE = Path(__file__).with_name("tcpupstream.py")
PORTS = [
    {"port": TCP_PORT, "name": "bench-tcp", "protocol": "tcp"},
    {"port": TLS_PORT, "name": "bench-tls", "protocol": "tls"},
]
CERT_IN_SANDBOX = "/tmp/bench-own.pem"
KEY_IN_SANDBOX = "/tmp/bench-own.key"


def label(port: int, sandbox_id: str) -> str:
    return f"{port}-{sandbox_id}.{DOMAIN}"


def echo_once(target: Target, timeout: float = 5.0) -> None:
    """One connection, one echo; raises unless the same bytes come back."""
    raw = socket.create_connection((target.ip, target.port), timeout=timeout)
    sock = target.tls.wrap_socket(raw, server_hostname=target.host) if target.tls is not None else raw
    with sock:
        sock.sendall(b"echo\nping")
        got = b""
        while len(got) < 4 and (more := sock.recv(4 - len(got))):
            got += more
    if got != b"ping":
        raise RuntimeError(f"{target.name} echoed {got!r}")


def wait_echoing(target: Target, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            echo_once(target)
            return
        except (OSError, RuntimeError) as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{target.name} did not echo within {timeout} s: {exc}") from None
            time.sleep(0.05)


def _start_service(sandbox_id: str, own_ca: trustme.CA) -> None:
    """The service's own certificate (for its gateway name) copied in, then the service started."""
    issued = own_ca.issue_cert(label(TLS_PORT, sandbox_id))
    with tempfile.TemporaryDirectory(prefix="bench-tcp-") as work:
        cert, key = Path(work) / "own.pem", Path(work) / "own.key"
        issued.cert_chain_pems[0].write_to_path(str(cert))
        issued.private_key_pem.write_to_path(str(key))
        podman("cp", str(cert), f"scalebox-{sandbox_id}:{CERT_IN_SANDBOX}")
        podman("cp", str(key), f"scalebox-{sandbox_id}:{KEY_IN_SANDBOX}")
    podman(
        "exec", "-d", f"scalebox-{sandbox_id}", "python3", "-c", UPSTREAM_SOURCE.read_text(),
        str(TCP_PORT), str(TLS_PORT), CERT_IN_SANDBOX, KEY_IN_SANDBOX,
    )  # fmt: skip


def _nginx(
    app: BenchAppliance, ip: str, sandbox_id: str, notes: list[str], log: Callable[[str], None]
) -> NginxStream | None:
    """nginx's stream module in front of the same service, or None (and a note) without it."""
    if nginx_path() is None:
        why = MISSING
    elif (load_module := nginx_stream()) is None:
        why = STREAM_MISSING
    else:
        nginx = NginxStream(
            load_module=load_module,
            tcp_upstream=f"{ip}:{TCP_PORT}",
            tls_upstream=f"{ip}:{TLS_PORT}",
            tls_name=label(TLS_PORT, sandbox_id),
            tcp_port=free_port(),
            tls_port=free_port(),
            cert=app.data_dir / "tls" / "server.pem",  # the gateway's own
            key=app.data_dir / "tls" / "server-key.pem",
        )
        try:
            nginx.start()
        except BaseException:
            nginx.stop()  # started but not listening: end it, and remove its prefix
            raise
        return nginx
    log(why)
    notes.append(why + " (nginx columns skipped)")
    return None


@contextlib.contextmanager
def tcp_rig(app: BenchAppliance, *, log: Callable[[str], None] = print) -> Iterator[Rig]:
    gateway_ca = ssl.create_default_context(cafile=str(app.ca))
    own_ca = trustme.CA()
    trusting_own = ssl.create_default_context()
    own_ca.configure_trust(trusting_own)
    with app.client(timeout=60) as api:
        body = {"timeout": 3600, "cpu_count": 2, "memory_mb": 1024, "custom_ports": PORTS}
        resp = api.post(f"{app.api_url}/sandboxes", json=body)
        if resp.status_code != 201:
            raise RuntimeError(f"create answered {resp.status_code}: {resp.text[:300]}")
        sandbox_id = str(resp.json()["data"]["sandbox_id"])
        nginx: NginxStream | None = None
        try:
            ip = container_ip(sandbox_id)
            _start_service(sandbox_id, own_ca)
            tcp_name, tls_name = label(TCP_PORT, sandbox_id), label(TLS_PORT, sandbox_id)
            notes: list[str] = []
            nginx = _nginx(app, ip, sandbox_id, notes, log)
            targets = [Target("direct tcp", ip, TCP_PORT, tcp_name)]
            if nginx is not None:
                targets.append(Target("nginx tcp", "127.0.0.1", nginx.tcp_port, tcp_name, gateway_ca))
            targets += [
                Target("gateway tcp", "127.0.0.1", app.port, tcp_name, gateway_ca),
                Target("direct tls", ip, TLS_PORT, tls_name, trusting_own),
            ]
            if nginx is not None:
                targets.append(Target("nginx tls", "127.0.0.1", nginx.tls_port, tls_name, trusting_own))
            targets.append(Target("gateway tls", "127.0.0.1", app.port, tls_name, trusting_own))
            for t in targets:
                wait_echoing(t)
            yield Rig(app=app, sandbox_id=sandbox_id, label=tcp_name, targets=targets, nginx=nginx, notes=notes)
        finally:
            if nginx is not None:
                nginx.stop()
            api.delete(f"{app.api_url}/sandboxes/{sandbox_id}")
