"""A tiny fixed-response HTTP/1.1 server: the upstream of the gateway benchmark.

It runs inside a sandbox on the container's own python3 (stdlib only), started
with `python3 -c <this file's text> <port>`:

    GET /            200, a 13-byte body
    GET /bytes/<n>   200, n bytes, written in 256 KiB blocks under flow control
    GET /ws          (Upgrade: websocket) a WebSocket echo: every data frame comes
                     back as it was sent (unmasked), a ping as a pong, a close as a close

Keep-alive unless the request says `Connection: close`. GET only (bodies ignored).
It does far less per request than any proxy in front of it, so that the
proxies, not it, are what the benchmark compares.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import sys

SMALL = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nhello, world\n"
BLOCK = memoryview(b"x" * (256 * 1024))
MAX_HEAD = 64 * 1024
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA


def ws_accept(key: bytes) -> bytes:
    """The Sec-WebSocket-Accept value for a Sec-WebSocket-Key (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.strip() + WS_GUID).digest())


def ws_header(first: int, length: int) -> bytes:
    """A server frame header (never masked)."""
    if length < 126:
        return bytes((first, length))
    if length < 1 << 16:
        return bytes((first, 126)) + length.to_bytes(2, "big")
    return bytes((first, 127)) + length.to_bytes(8, "big")


def ws_unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def ws_echo(buf: bytes) -> tuple[bytes, int, bool]:
    """Echo every complete frame at the start of buf.

    Returns the frames to send, how many bytes of buf were used, and whether a
    close frame was among them (then nothing after it is read)."""
    out = []
    pos, size = 0, len(buf)
    while size - pos >= 2:
        first, second = buf[pos], buf[pos + 1]
        length, head = second & 0x7F, 2
        if length == 126:
            if size - pos < 4:
                break
            length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
        elif length == 127:
            if size - pos < 10:
                break
            length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
        masked = second & 0x80
        if masked:
            head += 4
        end = pos + head + length
        if end > size:
            break
        payload = buf[pos + head : end]
        if masked:
            payload = ws_unmask(payload, buf[pos + head - 4 : pos + head])
        opcode = first & 0x0F
        pos = end
        if opcode == OP_PONG:
            continue
        if opcode == OP_PING:
            first = (first & 0xF0) | OP_PONG
        out.append(ws_header(first, length) + payload)
        if opcode == OP_CLOSE:
            return b"".join(out), pos, True
    return b"".join(out), pos, False


def header_value(head: bytes, name: bytes) -> bytes | None:
    """A header's value in a request head (name lower case), or None."""
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


class Http(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.writable = asyncio.Event()
        self.writable.set()
        self.streaming = False
        self.websocket = False
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
        if self.websocket:
            self.echo()
        else:
            self.serve()

    def echo(self) -> None:
        if self.transport is None:
            return
        out, used, close = ws_echo(self.buf)
        self.buf = self.buf[used:]
        if out:
            self.transport.write(out)
        if close:
            self.transport.close()

    def upgrade(self, head: bytes) -> None:
        assert self.transport is not None
        key = header_value(head, b"sec-websocket-key")
        if key is None:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()
            return
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + ws_accept(key) + b"\r\n\r\n"
        )
        self.websocket = True
        self.echo()

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
            lowered = head.lower()
            close = b"connection: close" in lowered
            if b"upgrade: websocket" in lowered:
                self.upgrade(head)
                return
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
