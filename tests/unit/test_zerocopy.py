"""splice(2) relaying between two real loopback TCP connections."""

from __future__ import annotations

import functools
import os

import pytest
import trio

from gateway import zerocopy
from gateway.streams import splice

pytestmark = pytest.mark.skipif(not zerocopy.available(), reason="os.splice needs Linux")


async def pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    """Two ends of one loopback TCP connection."""
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        accepted: list[trio.SocketStream] = []

        async def accept() -> None:
            accepted.append(await listener.accept())

        nursery.start_soon(accept)
        client = await trio.open_tcp_stream("127.0.0.1", port)
    await listener.aclose()
    return client, accepted[0]


async def read_all(stream: trio.SocketStream) -> bytes:
    parts = []
    while data := await stream.receive_some(1 << 16):
        parts.append(data)
    return b"".join(parts)


async def test_bytes_both_ways_with_half_close_and_counts() -> None:
    # client <-> (a | relay | b) <-> server
    client, a = await pair()
    b, server = await pair()
    upload = os.urandom(5 << 20)
    download = os.urandom(3 << 20)
    got: dict[str, bytes] = {}
    async with trio.open_nursery() as nursery:

        async def relay() -> None:
            got["counts"] = repr(await splice(a, b, idle_timeout=30))

        async def client_side() -> None:
            await client.send_all(upload)
            await client.send_eof()  # half-close: the answer still comes back
            got["download"] = await read_all(client)

        async def server_side() -> None:
            got["upload"] = await read_all(server)
            await server.send_all(download)
            await server.send_eof()

        nursery.start_soon(relay)
        nursery.start_soon(client_side)
        nursery.start_soon(server_side)
    assert got["upload"] == upload and got["download"] == download
    assert got["counts"] == repr((len(upload), len(download)))
    for s in (client, a, b, server):
        await s.aclose()


async def test_an_idle_pair_is_cut_and_a_reset_ends_it() -> None:
    client, a = await pair()
    b, server = await pair()
    with trio.fail_after(5):
        assert await splice(a, b, idle_timeout=0.2) == (0, 0)
    for s in (client, a, b, server):
        await s.aclose()
    client, a = await pair()
    b, server = await pair()
    async with trio.open_nursery() as nursery:
        result: list[tuple[int, int]] = []

        async def relay() -> None:
            result.append(await splice(a, b, idle_timeout=30))

        nursery.start_soon(relay)
        await client.send_all(b"abc")
        assert await server.receive_some(3) == b"abc"
        # Both ends go away: the relay ends too, having counted what passed.
        await trio.aclose_forcefully(client)
        await trio.aclose_forcefully(server)
    assert result == [(3, 0)]
    await a.aclose()
    await b.aclose()


async def test_closing_a_stream_from_elsewhere_ends_the_relay() -> None:
    client, a = await pair()
    b, server = await pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(splice, a, b, idle_timeout=30))
            await trio.sleep(0.05)
            # What the host-port forwarder does when a port is released.
            await trio.aclose_forcefully(a)
            await trio.aclose_forcefully(b)
    assert await client.receive_some(10) == b""
    for s in (client, server):
        await s.aclose()
