"""gateway.streams in memory: the sniffed prefix is replayed, splice copies and times out."""

from __future__ import annotations

import functools
import ssl

import pytest
import trio
import trio.testing
import trustme

from gateway import streams
from gateway.streams import PrefixedStream, splice

DEADLINE = 2.0


async def test_prefixed_stream_replays_the_prefix_then_reads_the_stream() -> None:
    with trio.fail_after(DEADLINE):
        left, right = trio.testing.memory_stream_pair()
        stream = PrefixedStream(right, b"\x16\x03\x01hello")
        await left.send_all(b" world")
        assert await stream.receive_some(3) == b"\x16\x03\x01"
        assert await stream.receive_some() == b"hello"  # the rest of the prefix, nothing more
        assert await stream.receive_some(100) == b" world"
        await stream.send_all(b"back")
        assert await left.receive_some() == b"back"
        await stream.send_eof()
        assert await left.receive_some() == b""
        await stream.aclose()
        with pytest.raises(trio.BrokenResourceError):  # closing it closed the stream beneath
            await left.send_all(b"x")
        await left.aclose()


async def test_prefixed_stream_without_a_prefix_passes_through() -> None:
    with trio.fail_after(DEADLINE):
        left, right = trio.testing.memory_stream_pair()
        stream = PrefixedStream(right, b"")
        await left.send_all(b"direct")
        assert await stream.receive_some(100) == b"direct"
        await left.send_eof()
        assert await stream.receive_some(100) == b""
        await stream.aclose()
        await left.aclose()


async def test_splice_copies_both_ways_and_ends_when_both_directions_end() -> None:
    with trio.fail_after(DEADLINE):
        client, gateway_side = trio.testing.memory_stream_pair()
        upstream_side, upstream = trio.testing.memory_stream_pair()
        ended = trio.Event()

        async def run() -> None:
            await splice(gateway_side, upstream_side, idle_timeout=60)
            ended.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await client.send_all(b"ping")
            assert await upstream.receive_some() == b"ping"
            await upstream.send_all(b"pong")
            assert await client.receive_some() == b"pong"
            # a half-close passes through, and the other direction keeps flowing
            await client.send_eof()
            assert await upstream.receive_some() == b""
            await upstream.send_all(b"after eof")
            assert await client.receive_some() == b"after eof"
            assert not ended.is_set()
            await upstream.send_eof()
            assert await client.receive_some() == b""
            await ended.wait()


async def test_splice_copies_large_transfers_intact() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    with trio.fail_after(DEADLINE):
        client, gateway_side = trio.testing.memory_stream_pair()
        upstream_side, upstream = trio.testing.memory_stream_pair()
        received = bytearray()

        async def sender() -> None:
            for start in range(0, len(payload), 10_000):
                await client.send_all(payload[start : start + 10_000])
            await client.send_eof()

        async def receiver() -> None:
            while data := await upstream.receive_some():
                received.extend(data)
            await upstream.send_eof()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(splice, gateway_side, upstream_side, idle_timeout=60))
            nursery.start_soon(sender)
            nursery.start_soon(receiver)
        assert bytes(received) == payload


async def test_splice_stops_after_the_idle_timeout(autojump_clock: trio.abc.Clock) -> None:
    _client, gateway_side = trio.testing.memory_stream_pair()
    upstream_side, _upstream = trio.testing.memory_stream_pair()
    with trio.fail_after(100):
        started = trio.current_time()
        await splice(gateway_side, upstream_side, idle_timeout=30)
        assert trio.current_time() - started == 30


async def test_splice_idle_timeout_counts_traffic_in_either_direction(autojump_clock: trio.abc.Clock) -> None:
    client, gateway_side = trio.testing.memory_stream_pair()
    upstream_side, upstream = trio.testing.memory_stream_pair()
    with trio.fail_after(1000):
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(splice, gateway_side, upstream_side, idle_timeout=30))

            async def one_way_chatter() -> None:
                # only the upstream ever talks, every 20 s: busy, not idle
                for _ in range(5):
                    await trio.sleep(20)
                    await upstream.send_all(b"tick")
                    assert await client.receive_some() == b"tick"

            await one_way_chatter()
        # 5 ticks 20 s apart, then 30 s of silence
        assert trio.current_time() - started == 100 + 30


class _WholeStream(trio.abc.Stream):
    """A stream that cannot be half-closed, as TLS."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return bytes(await self.stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


async def test_splice_ends_when_an_end_cannot_be_passed_on() -> None:
    with trio.fail_after(DEADLINE):
        client, gateway_side = trio.testing.memory_stream_pair()
        upstream_side, upstream = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(splice, _WholeStream(gateway_side), upstream_side, idle_timeout=60))
            await upstream.send_all(b"last words")
            await upstream.send_eof()
            assert await client.receive_some() == b"last words"
        # splice returned although the client never ended its side


async def test_splice_passes_a_half_close_through_a_prefixed_socket_like_stream() -> None:
    with trio.fail_after(DEADLINE):
        client, gateway_side = trio.testing.memory_stream_pair()
        upstream_side, upstream = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(splice, PrefixedStream(gateway_side, b""), upstream_side, idle_timeout=60)
            )
            await upstream.send_eof()
            assert await client.receive_some() == b""
            await client.send_all(b"still open")
            assert await upstream.receive_some() == b"still open"
            await client.send_eof()
            assert await upstream.receive_some() == b""


async def test_tls_records_that_arrived_together_are_relayed_in_one_send() -> None:
    # trio hands out one TLS record (16 KiB at most) per receive; splice gathers the
    # records already received so a bulk upload costs one send per 64 KiB, not four.
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("gather.test").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    with trio.fail_after(DEADLINE):
        a, b = trio.testing.memory_stream_pair()
        client = trio.SSLStream(a, client_ctx, server_hostname="gather.test")
        server = trio.SSLStream(b, server_ctx, server_side=True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.do_handshake)
            await server.do_handshake()
        payload = bytes(range(256)) * 256  # 64 KiB: four records
        await client.send_all(payload)
        await client.aclose()  # close_notify after the data
        got = await streams._receive_gathered(server)
        assert got == payload
        assert await streams._receive_gathered(server) == b""
