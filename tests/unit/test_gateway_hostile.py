"""Hostile clients against a real gateway on loopback, each while a well-behaved client is served.

Every test runs the gateway with short limits and, for its whole length, a
well-behaved client on another address (127.0.0.2) that keeps sending requests,
on kept-alive and on fresh connections. Each hostile shape must be answered as
specified within its deadline, and every answer the well-behaved client gets
must be the right one, and prompt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import h11
import pytest
import trio

from gateway.access import Verdict
from gateway.limits import ConnectionLimits, HttpLimits
from gateway.server import GatewayLimits
from tests.unit.test_gateway_proxy import (
    CA_PEM,
    Peer,
    Running,
    Upstream,
    echoed,
    fetch,
    forward_to,
    get,
    header,
    read_until_eof,
    running_gateway,
    upstream,
)

HEAD_TIMEOUT = 0.5
BODY_IDLE = 0.3
REQUEST_TIMEOUT = 0.6
HANDSHAKE_TIMEOUT = 0.5
PER_ADDRESS = 40
LIMITS = GatewayLimits(
    sniff_timeout=0.5,
    handshake_timeout=HANDSHAKE_TIMEOUT,
    drain_timeout=1.0,
    http=HttpLimits(
        head_timeout=HEAD_TIMEOUT,
        keepalive_timeout=5.0,
        body_idle_timeout=BODY_IDLE,
        request_timeout=REQUEST_TIMEOUT,
        body_min_rate=1000.0,
        upstream_idle_timeout=2.0,
        max_request_line=1024,
        max_head=4096,
        max_headers=20,
    ),
    connections=ConnectionLimits(max_connections=500, max_per_address=PER_ADDRESS),
)
# Beyond a deadline, for a loaded machine.
SLACK = 1.0  # a cut comes at its deadline, give or take a loaded machine
DEADLINE = 5.0
GOOD_ADDRESS = "127.0.0.2"
GOOD_CLIENT_BOUND = 1.5  # seconds: the slowest answer the well-behaved client may see


def routes(up: Upstream) -> dict[str, Verdict]:
    # gamma.test is routed but not in the gateway's certificate (alpha.test, beta.test).
    return {name: forward_to(up) for name in ("alpha.test", "beta.test", "gamma.test")}


# -- the well-behaved client -----------------------------------------------------------


@dataclass
class Behaved:
    answered: int = 0
    slowest: float = 0.0
    failures: list[str] = field(default_factory=list)


async def _behave(gw: Running, record: Behaved) -> None:
    n = 0
    while True:
        stream = await trio.open_tcp_stream("127.0.0.1", gw.port, local_address=GOOD_ADDRESS)
        client = Peer(stream, h11.CLIENT)
        try:
            for _ in range(5):  # then a fresh connection
                n += 1
                target = f"/good/{n}"
                began = trio.current_time()
                response, body = await fetch(client, get(target))
                record.slowest = max(record.slowest, trio.current_time() - began)
                if response.status_code != 200 or echoed(body)["target"] != target:
                    record.failures.append(f"{target}: {response.status_code} {body[:200]!r}")
                record.answered += 1
                await trio.sleep(0.01)
        finally:
            await stream.aclose()


@asynccontextmanager
async def well_behaved(gw: Running) -> AsyncIterator[Behaved]:
    """A client served all along the block; on leaving, check it got every answer right."""
    record = Behaved()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_behave, gw, record)
        yield record
        with trio.fail_after(2):
            while record.answered < 5:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert not record.failures, record.failures
    # Served alongside, not queued behind the hostile client: a stall behind it would last
    # its whole deadline or longer. The bound leaves room for a loaded 2-core machine.
    assert record.slowest < GOOD_CLIENT_BOUND, record.slowest


@asynccontextmanager
async def scene(*, limits: GatewayLimits = LIMITS) -> AsyncIterator[tuple[Running, Upstream]]:
    with trio.fail_after(DEADLINE):
        async with upstream() as up, running_gateway(routes(up), limits=limits) as gw, well_behaved(gw):
            yield gw, up


def hostile(up: Upstream) -> list[bytes]:
    """The targets of the requests that reached the upstream, but the well-behaved client's."""
    return [r.target for r, _ in up.requests if not r.target.startswith(b"/good/")]


def status_of(raw: bytes) -> int:
    assert raw.startswith(b"HTTP/1.1 "), raw[:100]
    return int(raw[9:12])


def split(raw: bytes) -> tuple[bytes, dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.lower(), echoed(body)


async def send_and_read_to_close(gw: Running, data: bytes) -> tuple[bytes, float]:
    """Send raw bytes, read until the gateway closes; (everything read, seconds it took)."""
    stream = await gw.connect()
    began = trio.current_time()
    await stream.send_all(data)
    try:
        received = await read_until_eof(stream)
    except trio.BrokenResourceError:  # a reset after the answer is as good as a close
        received = b""
    await stream.aclose()
    return received, trio.current_time() - began


async def trickle(stream: trio.abc.Stream, data: bytes, every: float) -> None:
    """Send `data` one byte at a time, until done or the gateway hangs up."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        for i in range(len(data)):
            await trio.sleep(every)
            await stream.send_all(data[i : i + 1])


# -- slow clients ----------------------------------------------------------------------


async def test_slow_headers_are_cut_at_the_head_deadline(log_events: list[dict[str, Any]]) -> None:
    async with scene() as (gw, up):
        stream = await gw.connect()
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: alpha.test\r\n")
        began = trio.current_time()
        async with trio.open_nursery() as nursery:
            # a byte every 50 ms, well within any per-read limit, never the end of the head
            nursery.start_soon(trickle, stream, b"X-Slow: " + b"a" * 1000, 0.05)
            with contextlib.suppress(trio.BrokenResourceError):
                assert await read_until_eof(stream) == b""
            nursery.cancel_scope.cancel()
        assert HEAD_TIMEOUT - 0.05 <= trio.current_time() - began < HEAD_TIMEOUT + SLACK
        assert hostile(up) == []
        await stream.aclose()
    assert [e["received"] > 0 for e in log_events if e["event"] == "gateway.head_timeout"] == [True]


async def test_a_stalled_body_is_answered_408_at_the_idle_deadline() -> None:
    async with scene() as (gw, up):
        stream = await gw.connect()
        await stream.send_all(b"POST /up HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: 100\r\n\r\n0123456789")
        began = trio.current_time()
        raw = await read_until_eof(stream)
        assert BODY_IDLE - 0.05 <= trio.current_time() - began < BODY_IDLE + SLACK
        head, reply = split(raw)
        assert status_of(raw) == 408 and b"connection: close" in head
        assert reply["error"] == "request_timeout"
        assert "stalled" in reply["message"]
        assert hostile(up) == []
        await stream.aclose()


async def test_a_body_trickled_within_the_idle_limit_is_cut_at_the_whole_request_deadline() -> None:
    async with scene() as (gw, up):
        stream = await gw.connect()
        await stream.send_all(b"POST /up HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: 10000\r\n\r\n")
        began = trio.current_time()
        async with trio.open_nursery() as nursery:
            # a byte every 100 ms: each read is within the 300 ms idle limit, forever
            nursery.start_soon(trickle, stream, b"x" * 10000, 0.1)
            raw = await read_until_eof(stream)
            nursery.cancel_scope.cancel()
        assert REQUEST_TIMEOUT - 0.05 <= trio.current_time() - began < REQUEST_TIMEOUT + SLACK
        head, reply = split(raw)
        assert status_of(raw) == 408 and b"connection: close" in head
        assert "too slow" in reply["message"]
        assert hostile(up) == []
        await stream.aclose()


async def test_a_clienthello_trickled_is_cut_at_the_handshake_deadline(log_events: list[dict[str, Any]]) -> None:
    async with scene() as (gw, _):
        stream = await gw.connect()
        # A record header announcing 512 bytes of ClientHello, then hardly anything.
        await stream.send_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03")
        began = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle, stream, b"\x03" + b"\x00" * 500, 0.05)
            with contextlib.suppress(trio.BrokenResourceError):
                assert await read_until_eof(stream) == b""
            nursery.cancel_scope.cancel()
        assert HANDSHAKE_TIMEOUT - 0.05 <= trio.current_time() - began < HANDSHAKE_TIMEOUT + SLACK
        await stream.aclose()
    [failed] = [e for e in log_events if e["event"] == "gateway.tls_failed"]
    assert "within 0.5 s" in failed["error"]


# -- oversized heads -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "status", "error"),
    [
        # complete, with a request line over max_request_line
        (b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: alpha.test\r\n\r\n", 414, "uri_too_long"),
        # a request line that outgrows max_head before it even ends
        (b"GET /" + b"a" * 5000, 414, "uri_too_long"),
        # complete, with headers over max_head in all
        (b"GET / HTTP/1.1\r\nHost: alpha.test\r\n" + b"X-Big: " + b"b" * 4500 + b"\r\n\r\n", 431, "headers_too_large"),
        # headers that outgrow max_head before the head ends
        (b"GET / HTTP/1.1\r\nHost: alpha.test\r\n" + b"X-Pad: 0123456789\r\n" * 300, 431, "headers_too_large"),
        # more header fields than max_headers
        (b"GET / HTTP/1.1\r\nHost: alpha.test\r\n" + b"X-N: 1\r\n" * 25 + b"\r\n", 431, "headers_too_large"),
    ],
    ids=["long-request-line", "endless-request-line", "large-head", "endless-head", "too-many-headers"],
)
async def test_oversized_heads_are_refused_and_closed(data: bytes, status: int, error: str) -> None:
    async with scene() as (gw, up):
        raw, took = await send_and_read_to_close(gw, data)
        head, reply = split(raw)
        assert status_of(raw) == status and b"connection: close" in head
        assert reply["error"] == error
        assert took < 0.3
        assert hostile(up) == []


# -- request smuggling -----------------------------------------------------------------

H = b"Host: alpha.test\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: alpha.test\r\n\r\n"
POST = b"POST / HTTP/1.1\r\n" + H
CHUNKED = POST + b"Transfer-Encoding: chunked\r\n\r\n"
SHAPES: dict[str, tuple[bytes, int]] = {
    # Content-Length with Transfer-Encoding, either order (CL.TE and TE.CL desync)
    "cl-and-te": (POST + b"Content-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED, 400),
    "te-and-cl": (POST + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n", 400),
    # conflicting Content-Lengths (h11)
    "two-content-lengths": (POST + b"Content-Length: 5\r\nContent-Length: 44\r\n\r\nhello" + SMUGGLED, 400),
    "content-length-list": (POST + b"Content-Length: 5, 44\r\n\r\nhello" + SMUGGLED, 400),
    "content-length-signed": (POST + b"Content-Length: +5\r\n\r\nhello", 400),
    # obsolete line folding
    "obs-fold-space": (b"GET / HTTP/1.1\r\n" + H + b"X-A: b\r\n Transfer-Encoding: chunked\r\n\r\n", 400),
    "obs-fold-tab": (b"GET / HTTP/1.1\r\n" + H + b"X-A: b\r\n\tc\r\n\r\n", 400),
    # bad chunk sizes and chunk framing (found while the body is read)
    "chunk-size-not-hex": (CHUNKED + b"zz\r\nhello\r\n0\r\n\r\n", 400),
    "chunk-size-negative": (CHUNKED + b"-5\r\nhello\r\n0\r\n\r\n", 400),
    "chunk-size-0x": (CHUNKED + b"0x5\r\nhello\r\n0\r\n\r\n", 400),
    "chunk-size-overflow": (CHUNKED + b"f" * 40 + b"\r\nhello\r\n0\r\n\r\n", 400),
    "chunk-without-crlf": (CHUNKED + b"5\r\nhelloXX0\r\n\r\n", 400),
    # control characters in a header value
    "ctl-soh": (b"GET / HTTP/1.1\r\n" + H + b"X-A: b\x01c\r\n\r\n", 400),
    "ctl-esc": (b"GET / HTTP/1.1\r\n" + H + b"X-A: b\x1bc\r\n\r\n", 400),
    "ctl-del": (b"GET / HTTP/1.1\r\n" + H + b"X-A: b\x7fc\r\n\r\n", 400),
    "ctl-nul": (b"GET / HTTP/1.1\r\n" + H + b"X-A: b\x00c\r\n\r\n", 400),
    "ctl-bare-cr": (b"GET / HTTP/1.1\r\n" + H + b"X-A: b\rc\r\n\r\n", 400),
    "space-before-colon": (b"GET / HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n\r\n", 400),
    # a Transfer-Encoding other than chunked: 501, as RFC 9112 section 6.1 asks
    "te-gzip": (POST + b"Transfer-Encoding: gzip\r\n\r\n", 501),
    "te-gzip-chunked": (POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    "te-chunked-twice": (POST + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 501),
    "te-xchunked": (POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 501),
    "te-two-headers": (CHUNKED[:-2] + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501),
    # and any Transfer-Encoding in HTTP/1.0
    "te-in-http10": (b"POST / HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED, 400),
}  # fmt: skip


@pytest.mark.parametrize(("data", "status"), list(SHAPES.values()), ids=list(SHAPES))
async def test_smuggling_shapes_are_refused_and_the_connection_closed(data: bytes, status: int) -> None:
    async with scene() as (gw, up):
        raw, took = await send_and_read_to_close(gw, data)
        head, reply = split(raw)
        assert status_of(raw) == status
        assert b"connection: close" in head
        assert reply["success"] is False and reply["error"] in ("bad_request", "not_implemented")
        assert raw.count(b"HTTP/1.1 ") == 1  # nothing smuggled got an answer
        assert took < 0.3
        assert hostile(up) == []  # and nothing complete reached the upstream


# -- TLS: SNI and Host -----------------------------------------------------------------


def no_sni_context() -> ssl.SSLContext:
    """Verifies the certificate chain but names no host: what curl does for https://<ip>/."""
    ctx = ssl.create_default_context(cafile=str(CA_PEM))
    ctx.check_hostname = False
    return ctx


async def connect_without_sni(gw: Running) -> trio.SSLStream[trio.SocketStream]:
    tls = trio.SSLStream(await gw.connect(), no_sni_context(), server_hostname=None, https_compatible=True)
    await tls.do_handshake()
    return tls


async def test_tls_without_sni_reaches_only_hosts_the_certificate_covers() -> None:
    async with scene() as (gw, up):
        client = Peer(await connect_without_sni(gw), h11.CLIENT)
        response, body = await fetch(client, get("/covered", host=b"alpha.test"))
        assert response.status_code == 200 and echoed(body)["target"] == "/covered"
        # gamma.test is routed, but the certificate this client was shown is not for it
        response, body = await fetch(client, get("/uncovered", host=b"gamma.test"))
        assert response.status_code == 421
        reply = echoed(body)
        assert reply["error"] == "misdirected_request"
        assert "does not cover gamma.test" in reply["message"]
        # a 421 is an ordinary answer: the connection carries on
        response, _ = await fetch(client, get("/again", host=b"beta.test:443"))
        assert response.status_code == 200
        assert hostile(up) == [b"/covered", b"/again"]
        await client.stream.aclose()


async def test_sni_and_host_that_disagree_get_421() -> None:
    async with scene() as (gw, up):
        client = Peer(await gw.connect_tls("alpha.test"), h11.CLIENT)
        # beta.test is in the same certificate and routed: still not this connection's host
        response, body = await fetch(client, get("/other", host=b"beta.test"))
        assert response.status_code == 421
        reply = echoed(body)
        assert reply["error"] == "misdirected_request"
        assert "opened for alpha.test" in reply["message"]
        browser = (b"accept", b"text/html,*/*;q=0.8")
        response, body = await fetch(client, get("/other", host=b"BETA.test", headers=[browser]))
        assert response.status_code == 421
        assert header(response.headers, b"content-type") == b"text/html; charset=utf-8"
        assert b"421 misdirected request" in body
        # its own host, in any spelling, is served on the same connection
        response, _ = await fetch(client, get("/own", host=b"ALPHA.test.:443"))
        assert response.status_code == 200
        assert hostile(up) == [b"/own"]
        await client.stream.aclose()


async def test_plain_http_serves_any_routed_host() -> None:
    async with scene() as (gw, _):
        client = await gw.client()
        for host in (b"alpha.test", b"gamma.test"):
            response, _ = await fetch(client, get(host=host))
            assert response.status_code == 200
        await client.stream.aclose()


# -- floods ----------------------------------------------------------------------------


async def test_a_flood_from_one_address_is_capped_and_the_excess_closed_at_once(
    log_events: list[dict[str, Any]],
) -> None:
    excess = 20
    # Silent connections are held until the test lets go (not cut at the sniff deadline).
    limits = dataclasses.replace(LIMITS, sniff_timeout=DEADLINE)
    async with scene(limits=limits) as (gw, _):
        closed: list[trio.SocketStream] = []

        async def watch(stream: trio.SocketStream) -> None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):  # the test's own close
                assert await read_until_eof(stream) == b""
                closed.append(stream)

        flood: list[trio.SocketStream] = []
        async with trio.open_nursery() as nursery:
            for _ in range(PER_ADDRESS + excess):
                flood.append(await gw.connect())
                nursery.start_soon(watch, flood[-1])
            # the excess is closed at once, long before any deadline
            with trio.fail_after(1.0):
                while len(closed) < excess:
                    await trio.sleep(0.01)
            await trio.sleep(0.1)
            assert len(closed) == excess
            # and the address gets nothing more while it holds its share
            late = await gw.connect()
            with trio.fail_after(1.0), contextlib.suppress(trio.BrokenResourceError):
                assert await read_until_eof(late) == b""
            await late.aclose()
            for stream in flood:
                await stream.aclose()
        # its connections gone, the address is served again
        client = await gw.client()
        response, _ = await fetch(client, get())
        assert response.status_code == 200
        await client.stream.aclose()
    refused = [e for e in log_events if e["event"] == "gateway.connection_refused"]
    assert len(refused) == excess + 1
    assert {e["reason"] for e in refused} == {"too_many_connections_from_address"}
    assert all(e["peer"].startswith("127.0.0.1:") for e in refused)
