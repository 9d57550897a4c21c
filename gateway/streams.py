"""Small stream adapters: replay peeked bytes, and splice two streams together."""

from __future__ import annotations

import contextlib

import trio

from gateway import zerocopy

CHUNK = 64 * 1024


class PrefixedStream(trio.abc.Stream):
    """A stream that first yields bytes already read from it (the sniffed prefix).

    Protocol sniffing consumes the first bytes of a connection; TLS and HTTP parsers
    that come next must see them again, as mitmproxy's layers carry peeked data.
    """

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self.stream = stream
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            n = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:n], self._prefix[n:]
            return bytes(data)
        return bytes(await self.stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if isinstance(self.stream, trio.abc.HalfCloseableStream):
            await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()


def peer_of(stream: trio.SocketStream) -> tuple[str, str]:
    """(address, "address:port") of a client connection, for caps and the access log."""
    try:
        addr = stream.socket.getpeername()
    except OSError:
        return "?", "?"
    host, port = addr[0], addr[1]
    return host, f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Activity:
    def __init__(self) -> None:
        self.last = trio.current_time()


def _half_closeable(stream: trio.abc.Stream) -> bool:
    if isinstance(stream, PrefixedStream):
        stream = stream.stream
    return isinstance(stream, trio.abc.HalfCloseableStream)


def _holds_more(stream: trio.abc.Stream) -> bool:
    """Whether a TLS stream already holds received bytes it has not handed out.

    trio's SSLStream returns one TLS record (at most 16 KiB) per receive_some however
    much is asked for, so a bulk upload through TLS would cost a send per record. The
    records that arrived together can be gathered first: reading these two buffer
    sizes is only a hint (the reads still go through receive_some), and without
    the attributes the splice just goes record by record as before.
    """
    if isinstance(stream, PrefixedStream):
        stream = stream.stream
    if not isinstance(stream, trio.SSLStream):
        return False
    try:
        return bool(stream._ssl_object.pending() or stream._incoming.pending)
    except AttributeError:
        return False


async def _receive_gathered(src: trio.abc.Stream) -> bytes:
    """Up to CHUNK bytes: one receive, then whatever `src` already holds (see _holds_more)."""
    data = bytes(await src.receive_some(CHUNK))
    if not data or not _holds_more(src):
        return data
    parts = [data]
    size = len(data)
    while size < CHUNK and _holds_more(src):
        more = await src.receive_some(CHUNK - size)
        if not more:
            break  # the end: the next receive says so again
        parts.append(bytes(more))
        size += len(more)
    return b"".join(parts)


async def _pump(src: trio.abc.Stream, dst: trio.abc.Stream, activity: _Activity, moved: list[int]) -> bool:
    """Copy until `src` ends, counting into `moved[0]`; return whether `dst` could be told of the end."""
    try:
        while data := await _receive_gathered(src):
            activity.last = trio.current_time()
            await dst.send_all(data)
            moved[0] += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    # Pass the half-close on where the transport can say it (TCP). TLS cannot: its
    # peer would wait for bytes that never come, so the caller ends the whole splice.
    if not _half_closeable(dst):
        return False
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        await dst.send_eof()  # type: ignore[attr-defined]
    return True


async def splice(a: trio.abc.Stream, b: trio.abc.Stream, *, idle_timeout: float) -> tuple[int, int]:
    """Copy bytes both ways until both directions end, or nothing moved for idle_timeout;
    return the bytes copied from a to b and from b to a (for the access log).

    A direction that ends into a stream that cannot be half-closed (TLS) ends both.
    Idleness is measured across both directions together: a WebSocket that only
    ever talks one way is busy, not idle. Two plain TCP sockets are relayed inside
    the kernel (gateway/zerocopy.py).
    """
    in_kernel = isinstance(a, trio.SocketStream) and isinstance(b, trio.SocketStream) and zerocopy.available()
    activity = _Activity()
    a_to_b, b_to_a = [0], [0]
    async with trio.open_nursery() as nursery:
        done = 0

        async def pump(src: trio.abc.Stream, dst: trio.abc.Stream, moved: list[int]) -> None:
            nonlocal done
            if in_kernel:
                assert isinstance(src, trio.SocketStream) and isinstance(dst, trio.SocketStream)
                told = await zerocopy.pump(src.socket, dst.socket, activity, moved)
            else:
                told = await _pump(src, dst, activity, moved)
            done += 1
            if done == 2 or not told:
                nursery.cancel_scope.cancel()

        nursery.start_soon(pump, a, b, a_to_b)
        nursery.start_soon(pump, b, a, b_to_a)
        while True:
            await trio.sleep_until(activity.last + idle_timeout)
            if trio.current_time() >= activity.last + idle_timeout:
                nursery.cancel_scope.cancel()
                break
    return a_to_b[0], b_to_a[0]
