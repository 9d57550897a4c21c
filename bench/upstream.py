"""A tiny fixed-response HTTP/1.1 server: the upstream of the gateway benchmark.

It runs inside a sandbox on the container's own python3 (stdlib only), started
with `python3 -c <this file's text> <port>`:

    GET /            200, a 13-byte body
    GET /bytes/<n>   200, n bytes, written in 256 KiB blocks under flow control

Keep-alive unless the request says `Connection: close`. GET only (bodies ignored).
It does far less per request than any proxy in front of it, so that the
proxies, not it, are what the benchmark compares.
"""

from __future__ import annotations

import asyncio
import sys

SMALL = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nhello, world\n"
BLOCK = memoryview(b"x" * (256 * 1024))
MAX_HEAD = 64 * 1024


class Http(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.writable = asyncio.Event()
        self.writable.set()
        self.streaming = False
        self.task: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=1 << 20)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.serve()

    def serve(self) -> None:
        while not self.streaming and self.transport is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self.transport.close()
                return
            head, self.buf = self.buf[:end], self.buf[end + 4 :]
            parts = head.split(b"\r\n", 1)[0].split(b" ")
            path = parts[1] if len(parts) > 1 else b"/"
            close = b"connection: close" in head.lower()
            if path.startswith(b"/bytes/"):
                self.streaming = True
                self.task = asyncio.ensure_future(self.stream(int(path[7:]), close))
                return
            self.transport.write(SMALL)
            if close:
                self.transport.close()
                return

    async def stream(self, size: int, close: bool) -> None:
        if self.transport is None:
            return
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % size
        )
        left = size
        while left > 0:
            await self.writable.wait()
            if self.transport is None:
                return
            n = min(left, len(BLOCK))
            self.transport.write(BLOCK[:n])
            left -= n
        if close:
            self.transport.close()
            return
        self.streaming = False
        self.serve()


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Http, "0.0.0.0", port, backlog=1024, reuse_address=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8000))
