"""New (full) TLS handshakes/s: a fresh TLS session per request, nothing resumed.

wrk with `Connection: close` reconnects per request but resumes its TLS session
(OpenSSL keeps it across `SSL_clear`), so its handshakes skip the certificate
signature and key exchange a new client pays for. This client never offers a
session: every connection is a full handshake (checked: `session_reused` is
false), then one `GET /` with `Connection: close`, read to the end.

It runs in a few processes of a few threads each (OpenSSL releases the GIL while
it computes), started together; their own CPU time is reported, because on this
2-core machine the client's handshake work competes with the server's.
"""

from __future__ import annotations

import multiprocessing
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

from bench.client import Target


@dataclass(frozen=True)
class HandshakeResult:
    handshakes: int
    errors: int
    resumed: int
    seconds: float
    client_cpu_s: float

    @property
    def per_s(self) -> float:
        return self.handshakes / self.seconds if self.seconds else 0.0

    @property
    def client_busy(self) -> float:
        """Client CPU seconds per wall second (2.0 is both cores of this machine)."""
        return self.client_cpu_s / self.seconds if self.seconds else 0.0


def _one(ctx: ssl.SSLContext, ip: str, port: int, sni: str, request: bytes) -> tuple[bool, bool]:
    """One connection: (a 200 came back, the session was resumed)."""
    with socket.create_connection((ip, port), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname=sni) as tls:
        tls.sendall(request)
        head = tls.recv(65536)
        while tls.recv(65536):
            pass
        return head.startswith(b"HTTP/1.1 200"), tls.session_reused


def _worker(ip: str, port: int, host: str, cafile: str, seconds: float, threads: int, pipe: Any, go: Any) -> None:
    """In a child process: once `go` is set, `threads` loops of full handshakes for `seconds`."""
    ctx = ssl.create_default_context(cafile=cafile)
    sni = host.rsplit(":", 1)[0]
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    counts = [[0, 0, 0] for _ in range(threads)]  # ok, errors, resumed
    pipe.put("ready")
    go.wait()
    end = time.monotonic() + seconds

    def loop(i: int) -> None:
        while time.monotonic() < end:
            try:
                ok, resumed = _one(ctx, ip, port, sni, request)
            except (OSError, ssl.SSLError):
                counts[i][1] += 1
                continue
            counts[i][0 if ok else 1] += 1
            counts[i][2] += resumed

    cpu0 = time.process_time()
    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    pipe.put((*(sum(c[k] for c in counts) for k in range(3)), time.process_time() - cpu0))


def run(target: Target, *, cafile: str, seconds: float, processes: int = 4, threads: int = 4) -> HandshakeResult:
    ctx = multiprocessing.get_context("spawn")
    queue, go = ctx.Queue(), ctx.Event()
    args = (target.ip, target.port, target.host, cafile, seconds, threads, queue, go)
    procs = [ctx.Process(target=_worker, args=args, daemon=True) for _ in range(processes)]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            queue.get(timeout=60)  # every process is up: start them together
        go.set()
        parts = [queue.get(timeout=seconds + 60) for _ in procs]
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    ok, errors, resumed, cpu = (sum(x[k] for x in parts) for k in range(4))
    return HandshakeResult(int(ok), int(errors), int(resumed), seconds, float(cpu))
