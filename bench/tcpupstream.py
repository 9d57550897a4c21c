"""A raw TCP service: the upstream of the tcp benchmark.

It runs inside a sandbox on the container's own python3 (stdlib only), started
with `python3 -c <this file's text> <plain port> <tls port> <cert> <key>`. Both
ports speak the same protocol; the TLS one ends TLS itself, with a certificate
of its own (the passthrough case). A connection is a series of commands, each a
line:

    echo       every byte after the line comes back as it is, until the client closes
    send N     N bytes come back
    sink N     N bytes are read and dropped, then `done` and a newline come back

A thread per connection, blocking sockets and one large buffer: it does far less
per byte than any proxy in front of it, so that the proxies are what is compared.
"""

from __future__ import annotations

import socket
import ssl
import sys
import threading

MAX_LINE = 64
BLOCK = memoryview(b"x" * (256 * 1024))
DONE = b"done\n"


def parse_command(line: bytes) -> tuple[str, int]:
    """(`echo`, 0), (`send`, N) or (`sink`, N) from a command line (without its newline)."""
    words = line.strip().split()
    if words == [b"echo"]:
        return "echo", 0
    if len(words) == 2 and words[0] in (b"send", b"sink") and words[1].isdigit():
        return words[0].decode(), int(words[1])
    raise ValueError(f"not a command: {line[:MAX_LINE]!r}")


class Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray(1 << 20)
        self.view = memoryview(self.buf)
        self.pending = b""  # read past the command line

    def line(self) -> bytes | None:
        """The next command line; None when the client closed."""
        data = self.pending
        while b"\n" not in data:
            if len(data) > MAX_LINE:
                raise ValueError("command line too long")
            more = self.sock.recv(4096)
            if not more:
                return None
            data += more
        line, _, self.pending = data.partition(b"\n")
        return line

    def echo(self) -> None:
        if self.pending:
            self.sock.sendall(self.pending)
        while n := self.sock.recv_into(self.view):
            self.sock.sendall(self.view[:n])

    def send(self, size: int) -> None:
        left = size
        while left > 0:
            n = min(left, len(BLOCK))
            self.sock.sendall(BLOCK[:n])
            left -= n

    def sink(self, size: int) -> None:
        left = size - len(self.pending)
        self.pending = self.pending[size:] if left < 0 else b""
        while left > 0:
            n = self.sock.recv_into(self.view, min(left, len(self.buf)))
            if not n:
                raise EOFError
            left -= n
        self.sock.sendall(DONE)

    def serve(self) -> None:
        while (line := self.line()) is not None:
            command, size = parse_command(line)
            if command == "echo":
                self.echo()
                return
            if command == "send":
                self.send(size)
            else:
                self.sink(size)


def handle(conn: socket.socket, context: ssl.SSLContext | None) -> None:
    try:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if context is not None:
            conn = context.wrap_socket(conn, server_side=True)
        Conn(conn).serve()
    except (OSError, EOFError, ValueError):
        pass
    finally:
        conn.close()


def listen(port: int, context: ssl.SSLContext | None) -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", port))
    server.listen(1024)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=handle, args=(conn, context), daemon=True).start()


def main(argv: list[str]) -> None:
    plain, tls, cert, key = int(argv[0]), int(argv[1]), argv[2], argv[3]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    threading.Thread(target=listen, args=(tls, context), daemon=True).start()
    listen(plain, None)


if __name__ == "__main__":
    main(sys.argv[1:])
