"""A minimal blocking HTTP/1.1 client for latency and transfer measurements.

Deliberately small (one socket, no pooling, no header objects) so that its own
cost per request is low and the same for every target it is pointed at.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass

_RECV = 1 << 20


class HttpError(Exception):
    pass


@dataclass(frozen=True)
class Target:
    """Where to connect and what to say: `ip:port`, optional TLS with SNI, a Host header."""

    name: str
    ip: str
    port: int
    host: str
    tls: ssl.SSLContext | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def url(self) -> str:
        """The URL a load generator resolves itself (the Host name, so SNI is right)."""
        return f"{self.scheme}://{self.host}/"


class Connection:
    def __init__(self, target: Target, *, timeout: float = 30.0) -> None:
        self.target = target
        raw = socket.create_connection((target.ip, target.port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock: socket.socket = raw
        if target.tls is not None:
            sock = target.tls.wrap_socket(raw, server_hostname=target.host.rsplit(":", 1)[0])
        self.sock = sock
        self.buf = bytearray()
        self.scratch = bytearray(_RECV)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, path: str = "/", *, close: bool = False, headers: Sequence[tuple[str, str]] = ()) -> int:
        """Send one GET and read the whole response; returns the body length."""
        return self.request("GET", path, close=close, headers=headers)

    def request(
        self,
        method: str,
        path: str,
        *,
        close: bool = False,
        headers: Sequence[tuple[str, str]] = (),
        body: Sequence[bytes | memoryview] = (),
    ) -> int:
        """Send one request (the body's parts, in order, with their Content-Length) and read
        the whole 200 response; returns the response body length."""
        extra = "Connection: close\r\n" if close else ""
        extra += "".join(f"{name}: {value}\r\n" for name, value in headers)
        if body or method != "GET":
            extra += f"Content-Length: {sum(len(part) for part in body)}\r\n"
        self.sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: {self.target.host}\r\n{extra}\r\n".encode())
        for part in body:
            self.sock.sendall(part)
        return self._read_response()

    def _read_response(self) -> int:
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self._fill()
        head = bytes(self.buf[:end]).decode("latin-1")
        del self.buf[: end + 4]
        lines = head.split("\r\n")
        status = lines[0].split(" ", 2)
        if len(status) < 2 or status[1] != "200":
            raise HttpError(f"{self.target.name}: {lines[0]!r}")
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length is None:
            raise HttpError(f"{self.target.name}: response without Content-Length")
        left = length - len(self.buf)
        if left <= 0:
            del self.buf[:length]
            return length
        self.buf.clear()
        view = memoryview(self.scratch)
        while left > 0:
            n = self.sock.recv_into(view, min(left, _RECV))
            if n == 0:
                raise HttpError(f"{self.target.name}: connection closed mid-body")
            left -= n
        return length

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise HttpError(f"{self.target.name}: connection closed before a response")
        self.buf += data


def timed_get(conn: Connection, path: str = "/") -> float:
    t0 = time.perf_counter()
    conn.get(path)
    return time.perf_counter() - t0


def timed_new_connection(target: Target) -> float:
    """Connect (and handshake), one GET with Connection: close, close."""
    t0 = time.perf_counter()
    with Connection(target) as conn:
        conn.get("/", close=True)
    return time.perf_counter() - t0
