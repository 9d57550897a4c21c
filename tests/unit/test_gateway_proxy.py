"""gateway.proxy on loopback: a real Gateway in front of upstreams written here with h11.

Each test runs `Gateway.serve` on 127.0.0.1 port 0 with a router that points hosts at
upstream servers the test owns, then talks to it as a client would. The harness at the
top is shared with test_gateway_server.py.
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import ssl
import struct
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h11
import pytest
import trio
import trustme
import wsproto
import wsproto.events as ws

from gateway.access import Forward, Refuse, Verdict
from gateway.proxy import HttpLimits
from gateway.server import Gateway, GatewayLimits
from gateway.tls.context import client_context
from gateway.tls.identity import ServerTls, load_server_tls
from gateway.upstream import Pool, TcpAddress

DEADLINE = 2.0
CA = trustme.CA()
CERT = CA.issue_cert("alpha.test", "beta.test")
_PEM = tempfile.TemporaryDirectory(prefix="gateway-test-")
CA_PEM, CERT_PEM, KEY_PEM = (Path(_PEM.name) / name for name in ("ca.pem", "cert.pem", "key.pem"))
CA.cert_pem.write_to_path(str(CA_PEM))
CERT.cert_chain_pems[0].write_to_path(str(CERT_PEM))
CERT.private_key_pem.write_to_path(str(KEY_PEM))

Headers = list[tuple[bytes, bytes]]


def server_tls() -> ServerTls:
    return load_server_tls(CERT_PEM, KEY_PEM)


def client_ssl_context() -> ssl.SSLContext:
    return client_context(CA_PEM)


# -- h11 on a trio stream, for both the test clients and the test upstreams -----------


class Peer:
    def __init__(self, stream: trio.abc.Stream, role: type[h11.CLIENT] | type[h11.SERVER]) -> None:
        self.stream = stream
        self.conn = h11.Connection(role)

    async def send(self, *events: h11.Event) -> None:
        for event in events:
            data = self.conn.send(event)
            if data:
                await self.stream.send_all(data)

    async def next_event(self) -> object:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(bytes(await self.stream.receive_some(65536)))

    async def read_body(self) -> bytes:
        body = bytearray()
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)
            else:
                raise AssertionError(f"unexpected {event!r} in a body")

    async def read_request(self) -> tuple[h11.Request, bytes] | None:
        event = await self.next_event()
        if isinstance(event, h11.ConnectionClosed):
            return None
        assert isinstance(event, h11.Request), event
        return event, await self.read_body()

    async def read_response(self) -> tuple[h11.Response, bytes]:
        event = await self.next_event()
        assert isinstance(event, h11.Response), event
        return event, await self.read_body()

    async def respond(self, status: int, body: bytes = b"", headers: Headers | None = None) -> None:
        headers = [*(headers or []), (b"content-length", str(len(body)).encode())]
        await self.send(h11.Response(status_code=status, headers=headers), h11.Data(data=body), h11.EndOfMessage())

    def next_cycle(self) -> bool:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
            return True
        return False


def header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for k, v in headers:
        if k == name:
            return bytes(v)
    return None


# -- test upstreams ------------------------------------------------------------------

Handler = Callable[["Upstream", trio.SocketStream], Awaitable[None]]


@dataclass
class Upstream:
    handler: Handler
    port: int = 0
    accepted: int = 0
    requests: list[tuple[h11.Request, bytes]] = field(default_factory=list)

    @property
    def address(self) -> TcpAddress:
        return TcpAddress("127.0.0.1", self.port)

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.accepted += 1
        try:
            await self.handler(self, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            pass
        finally:
            await trio.aclose_forcefully(stream)


async def echo_handler(up: Upstream, stream: trio.SocketStream) -> None:
    """Keep-alive upstream that answers each request with a JSON account of it."""
    peer = Peer(stream, h11.SERVER)
    while True:
        got = await peer.read_request()
        if got is None:
            return
        req, body = got
        up.requests.append((req, body))
        reply = {
            "port": up.port,
            "method": req.method.decode(),
            "target": req.target.decode(),
            "headers": [[k.decode(), v.decode()] for k, v in req.headers],
            "body": body.decode("latin-1"),
        }
        await peer.respond(
            200,
            json.dumps(reply).encode(),
            [
                (b"content-type", b"application/json"),
                (b"keep-alive", b"timeout=30"),
                (b"x-up-hop", b"1"),
                (b"connection", b"x-up-hop"),
            ],
        )
        if not peer.next_cycle():
            return


@asynccontextmanager
async def upstream(handler: Handler = echo_handler) -> AsyncIterator[Upstream]:
    up = Upstream(handler)
    async with trio.open_nursery() as nursery:
        [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
        up.port = listener.socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, up._connection, [listener])
        try:
            yield up
        finally:
            nursery.cancel_scope.cancel()


def forward_to(up: Upstream | int) -> Forward:
    port = up if isinstance(up, int) else up.port
    return Forward(TcpAddress("127.0.0.1", port), f"port {port} of sandbox sbx-test", "sbx-test", port)


def router_for(routes: dict[str, Verdict]) -> Callable[[str, str | None, bool], Verdict]:
    def route(host: str, token: str | None, agent_authorises: bool) -> Verdict:
        return routes.get(host, Refuse(404, "unknown_host", f"no route for {host}"))

    return route


# -- the gateway under test ----------------------------------------------------------


@dataclass
class Running:
    gateway: Gateway
    port: int
    shutdown: trio.Event
    stopped: trio.Event

    async def connect(self) -> trio.SocketStream:
        return await trio.open_tcp_stream("127.0.0.1", self.port)

    async def connect_tls(self, server_hostname: str = "alpha.test") -> trio.SSLStream[trio.SocketStream]:
        # Like an HTTPS client, take a close without close_notify as the end: the gateway's TLS is https_compatible.
        tls = trio.SSLStream(
            await self.connect(), client_ssl_context(), server_hostname=server_hostname, https_compatible=True
        )
        await tls.do_handshake()
        return tls

    async def client(self) -> Peer:
        return Peer(await self.connect(), h11.CLIENT)


def quick_limits(**http: float) -> GatewayLimits:
    base = {"head_timeout": 1.0, "keepalive_timeout": 5.0, "body_idle_timeout": 1.0, "upstream_idle_timeout": 1.0}
    return GatewayLimits(sniff_timeout=1.0, handshake_timeout=1.0, drain_timeout=1.0, http=HttpLimits(**(base | http)))


@asynccontextmanager
async def running_gateway(
    routes: dict[str, Verdict], *, limits: GatewayLimits | None = None, tls: ServerTls | None = None
) -> AsyncIterator[Running]:
    gateway = Gateway(
        router=router_for(routes),
        tls=tls or server_tls(),
        pool=Pool(idle_timeout=30.0, connect_timeout=1.0),
        limits=limits or quick_limits(),
    )
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    shutdown, stopped = trio.Event(), trio.Event()

    async def serve(task_status: trio.TaskStatus[None]) -> None:
        try:
            await gateway.serve(listeners, shutdown, task_status=task_status)
        finally:
            stopped.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(serve)
        try:
            yield Running(gateway, port, shutdown, stopped)
        finally:
            shutdown.set()


def get(target: str = "/", host: bytes = b"alpha.test", headers: Headers | None = None) -> h11.Request:
    return h11.Request(method="GET", target=target, headers=[(b"host", host), *(headers or [])])


async def fetch(client: Peer, request: h11.Request, body: bytes = b"") -> tuple[h11.Response, bytes]:
    await client.send(request)
    if body:
        await client.send(h11.Data(data=body))
    await client.send(h11.EndOfMessage())
    response = await client.read_response()
    client.next_cycle()
    return response


def echoed(body: bytes) -> dict[str, object]:
    reply = json.loads(body)
    assert isinstance(reply, dict)
    return reply


def echoed_headers(body: bytes) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in echoed(body)["headers"]:  # type: ignore[attr-defined]
        out.setdefault(k, []).append(v)
    return out


async def recv_exactly(stream: trio.abc.Stream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = await stream.receive_some(n - len(buf))
        assert data, f"EOF after {len(buf)} of {n} bytes"
        buf += data
    return bytes(buf)


async def read_until_eof(stream: trio.abc.Stream) -> bytes:
    buf = bytearray()
    while data := await stream.receive_some(65536):
        buf += data
    return bytes(buf)


# -- routing and headers ---------------------------------------------------------------


async def test_host_routing_reaches_the_right_upstream() -> None:
    with trio.fail_after(DEADLINE):
        async with (
            upstream() as a,
            upstream() as b,
            running_gateway({"alpha.test": forward_to(a), "beta.test": forward_to(b)}) as gw,
        ):
            client = await gw.client()
            _, body = await fetch(client, get("/one", b"alpha.test"))
            assert echoed(body)["port"] == a.port
            _, body = await fetch(client, get("/two", b"BETA.test.:80"))
            assert echoed(body)["port"] == b.port
            assert [r.target for r, _ in a.requests] == [b"/one"]
            assert [r.target for r, _ in b.requests] == [b"/two"]
            await client.stream.aclose()


async def test_request_head_and_forwarding_headers_reach_upstream_hop_by_hop_stripped() -> None:
    with trio.fail_after(DEADLINE):
        async with upstream() as a, running_gateway({"alpha.test": forward_to(a)}) as gw:
            client = await gw.client()
            request = h11.Request(
                method="DELETE",
                target="/files/a%20b?x=1&y=2",
                headers=[
                    (b"host", b"alpha.test"),
                    (b"x-custom", b"kept"),
                    (b"authorization", b"Bearer t"),
                    # a client's claims of where the request came from are dropped, not trusted
                    (b"x-forwarded-for", b"10.1.2.3"),
                    (b"x-forwarded-proto", b"https"),
                    (b"x-forwarded-host", b"evil.test"),
                    (b"x-forwarded-port", b"444"),
                    (b"forwarded", b"for=10.9.9.9"),
                    (b"x-real-ip", b"10.8.8.8"),
                    (b"x-request-id", b"req-42"),
                    (b"connection", b"keep-alive, x-secret"),
                    (b"x-secret", b"listed in Connection"),
                    (b"keep-alive", b"timeout=5"),
                    (b"proxy-connection", b"keep-alive"),
                    (b"te", b"trailers"),
                    (b"trailer", b"x-checksum"),
                ],
            )
            response, body = await fetch(client, request)
            assert response.status_code == 200
            reply = echoed(body)
            assert reply["method"] == "DELETE"
            assert reply["target"] == "/files/a%20b?x=1&y=2"
            seen = echoed_headers(body)
            assert seen["host"] == ["alpha.test"]
            assert seen["x-custom"] == ["kept"]
            assert seen["authorization"] == ["Bearer t"]
            assert seen["x-forwarded-for"] == ["127.0.0.1"]
            assert seen["x-forwarded-proto"] == ["http"]
            assert seen["x-forwarded-host"] == ["alpha.test"]
            for claim in ("x-forwarded-port", "forwarded", "x-real-ip"):
                assert claim not in seen, claim
            assert seen["x-request-id"] == ["req-42"]
            for hop in ("connection", "x-secret", "keep-alive", "proxy-connection", "te", "trailer"):
                assert hop not in seen, hop
            # and on the way back: the upstream's hop-by-hop headers stop at the gateway
            assert header(response.headers, b"content-type") == b"application/json"
            assert header(response.headers, b"keep-alive") is None
            assert header(response.headers, b"x-up-hop") is None
            await client.stream.aclose()


async def test_a_request_id_is_minted_when_the_client_sends_none() -> None:
    with trio.fail_after(DEADLINE):
        async with upstream() as a, running_gateway({"alpha.test": forward_to(a)}) as gw:
            client = await gw.client()
            _, first = await fetch(client, get())
            _, second = await fetch(client, get())
            [rid1], [rid2] = echoed_headers(first)["x-request-id"], echoed_headers(second)["x-request-id"]
            assert rid1 and rid2 and rid1 != rid2
            assert echoed_headers(first)["x-forwarded-for"] == ["127.0.0.1"]
            await client.stream.aclose()


async def test_an_unsendable_request_id_is_replaced_and_the_gateway_survives() -> None:
    # Truncating a client's X-Request-Id can leave a value h11 refuses to send on.
    odd = b"a" * 63 + b" b"
    with trio.fail_after(DEADLINE):
        async with upstream() as a, running_gateway({"alpha.test": forward_to(a)}) as gw:
            client = await gw.client()
            response, body = await fetch(client, get(headers=[(b"x-request-id", odd)]))
            assert response.status_code == 200
            [rid] = echoed_headers(body)["x-request-id"]
            assert rid and rid.strip() == rid
            await client.stream.aclose()
            # and the gateway still serves other connections
            other = await gw.client()
            response, _ = await fetch(other, get())
            assert response.status_code == 200
            await other.stream.aclose()


# -- keep-alive ----------------------------------------------------------------------


async def test_keep_alive_on_both_sides() -> None:
    with trio.fail_after(DEADLINE):
        async with upstream() as a, running_gateway({"alpha.test": forward_to(a)}) as gw:
            client = await gw.client()
            for i in range(5):
                response, body = await fetch(client, get(f"/r{i}"))
                assert response.status_code == 200
                assert echoed(body)["target"] == f"/r{i}"
            # a second client takes the same pooled upstream connection
            other = await gw.client()
            response, _ = await fetch(other, get("/other"))
            assert response.status_code == 200
            assert len(a.requests) == 6
            assert a.accepted == 1
            await client.stream.aclose()
            await other.stream.aclose()


async def test_a_client_closing_after_its_request_leaves_the_upstream_pooled() -> None:
    with trio.fail_after(DEADLINE):
        async with upstream() as a, running_gateway({"alpha.test": forward_to(a)}) as gw:
            for i in range(3):
                client = await gw.client()
                request = h11.Request(
                    method="GET", target=f"/c{i}", headers=[("Host", "alpha.test"), ("Connection", "close")]
                )
                response, _ = await fetch(client, request)
                assert response.status_code == 200
                await client.stream.aclose()
            assert len(a.requests) == 3
            assert a.accepted == 1


async def test_pipelined_requests_are_both_answered() -> None:
    with trio.fail_after(DEADLINE):
        async with upstream() as a, running_gateway({"alpha.test": forward_to(a)}) as gw:
            stream = await gw.connect()
            raw = b"GET /p1 HTTP/1.1\r\nHost: alpha.test\r\n\r\nGET /p2 HTTP/1.1\r\nHost: alpha.test\r\n\r\n"
            await stream.send_all(raw)
            client = Peer(stream, h11.CLIENT)
            # the client's h11 must believe it sent both requests
            client.conn.send(get("/p1"))
            client.conn.send(h11.EndOfMessage())
            _, body = await client.read_response()
            assert echoed(body)["target"] == "/p1"
            client.next_cycle()
            client.conn.send(get("/p2"))
            client.conn.send(h11.EndOfMessage())
            _, body = await client.read_response()
            assert echoed(body)["target"] == "/p2"
            await stream.aclose()


async def test_a_stale_pooled_upstream_connection_is_retried_for_a_bodyless_get() -> None:
    closed = trio.Event()

    async def one_then_close(up: Upstream, stream: trio.SocketStream) -> None:
        peer = Peer(stream, h11.SERVER)
        got = await peer.read_request()
        assert got is not None
        up.requests.append(got)
        # A keep-alive answer, then the upstream closes the idle connection anyway.
        await peer.respond(200, f"answer {len(up.requests)}".encode())
        await stream.aclose()
        closed.set()

    with trio.fail_after(DEADLINE):
        async with upstream(one_then_close) as a, running_gateway({"alpha.test": forward_to(a)}) as gw:
            client = await gw.client()
            response, body = await fetch(client, get("/1"))
            assert (response.status_code, body) == (200, b"answer 1")
            await closed.wait()
            await trio.sleep(0.05)  # let the FIN reach the gateway's pooled socket
            response, body = await fetch(client, get("/2"))
            assert (response.status_code, body) == (200, b"answer 2")
            assert a.accepted == 2
            await client.stream.aclose()


async def test_a_reset_pooled_upstream_connection_is_retried_for_a_bodyless_get() -> None:
    reset = trio.Event()

    async def one_then_reset(up: Upstream, stream: trio.SocketStream) -> None:
        peer = Peer(stream, h11.SERVER)
        got = await peer.read_request()
        assert got is not None
        up.requests.append(got)
        await peer.respond(200, f"answer {len(up.requests)}".encode())
        # Linger 0: the close sends a RST, so the gateway's next write itself fails.
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await stream.aclose()
        reset.set()

    with trio.fail_after(DEADLINE):
        async with upstream(one_then_reset) as a, running_gateway({"alpha.test": forward_to(a)}) as gw:
            client = await gw.client()
            response, body = await fetch(client, get("/1"))
            assert (response.status_code, body) == (200, b"answer 1")
            await reset.wait()
            await trio.sleep(0.05)
            response, body = await fetch(client, get("/2"))
            assert (response.status_code, body) == (200, b"answer 2")
            response, body = await fetch(client, get("/3"))
            assert (response.status_code, body) == (200, b"answer 3")
            assert a.accepted == 3
            await client.stream.aclose()


async def test_a_stale_pooled_upstream_connection_is_not_replayed_with_a_body() -> None:
    closed = trio.Event()

    async def one_then_close(up: Upstream, stream: trio.SocketStream) -> None:
        peer = Peer(stream, h11.SERVER)
        got = await peer.read_request()
        assert got is not None
        up.requests.append(got)
        await peer.respond(200, b"ok")
        await stream.aclose()
        closed.set()

    with trio.fail_after(DEADLINE):
        async with upstream(one_then_close) as a, running_gateway({"alpha.test": forward_to(a)}) as gw:
            client = await gw.client()
            response, _ = await fetch(client, get("/1"))
            assert response.status_code == 200
            await closed.wait()
            await trio.sleep(0.05)
            post = h11.Request(
                method="POST", target="/2", headers=[(b"host", b"alpha.test"), (b"content-length", b"4")]
            )
            response, body = await fetch(client, post, b"data")
            assert response.status_code == 502
            assert echoed(body)["error"] == "bad_gateway"
            assert a.accepted == 1
            await client.stream.aclose()


# -- streaming -----------------------------------------------------------------------


async def test_request_body_streams_to_upstream_before_the_client_finishes() -> None:
    first_chunk_upstream = trio.Event()

    async def handler(up: Upstream, stream: trio.SocketStream) -> None:
        peer = Peer(stream, h11.SERVER)
        req = await peer.next_event()
        assert isinstance(req, h11.Request)
        assert header(req.headers, b"transfer-encoding") == b"chunked"
        first = await peer.next_event()
        assert isinstance(first, h11.Data) and bytes(first.data) == b"first,"
        first_chunk_upstream.set()
        rest = await peer.read_body()
        await peer.respond(200, b"got " + bytes(first.data) + rest)

    with trio.fail_after(DEADLINE):
        async with upstream(handler) as a, running_gateway({"alpha.test": forward_to(a)}) as gw:
            client = await gw.client()
            post = h11.Request(
                method="POST", target="/up", headers=[(b"host", b"alpha.test"), (b"transfer-encoding", b"chunked")]
            )
            await client.send(post, h11.Data(data=b"first,"))
            await first_chunk_upstream.wait()  # the client has not sent the rest yet
            await client.send(h11.Data(data=b"second,"), h11.Data(data=b"third"), h11.EndOfMessage())
            response, body = await client.read_response()
            assert (response.status_code, body) == (200, b"got first,second,third")
            await client.stream.aclose()


async def test_response_body_streams_to_client_before_upstream_finishes() -> None:
    client_got_first = trio.Event()

    async def handler(up: Upstream, stream: trio.SocketStream) -> None:
        peer = Peer(stream, h11.SERVER)
        assert await peer.read_request() is not None
        await peer.send(h11.Response(status_code=200, headers=[(b"transfer-encoding", b"chunked")]))
        await peer.send(h11.Data(data=b"first,"))
        await client_got_first.wait()
        await peer.send(h11.Data(data=b"second"), h11.EndOfMessage())

    with trio.fail_after(DEADLINE):
        async with upstream(handler) as a, running_gateway({"alpha.test": forward_to(a)}) as gw:
            client = await gw.client()
            await client.send(get("/down"), h11.EndOfMessage())
            response = await client.next_event()
            assert isinstance(response, h11.Response) and response.status_code == 200
            first = await client.next_event()
            assert isinstance(first, h11.Data) and bytes(first.data) == b"first,"
            client_got_first.set()
            assert await client.read_body() == b"second"
            await client.stream.aclose()


async def test_a_client_leaving_mid_response_closes_the_upstream_connection() -> None:
    upstream_saw_close = trio.Event()

    async def handler(up: Upstream, stream: trio.SocketStream) -> None:
        peer = Peer(stream, h11.SERVER)
        assert await peer.read_request() is not None
        await peer.send(h11.Response(status_code=200, headers=[(b"transfer-encoding", b"chunked")]))
        await peer.send(h11.Data(data=b"working..."))
        # A quiet upstream (a long computation): it learns the client left only
        # because the gateway closes this connection.
        if await stream.receive_some(1024) == b"":
            upstream_saw_close.set()

    # The upstream idle timeout is far beyond the deadline: only the client's leaving closes it.
    limits = quick_limits(upstream_idle_timeout=60.0)
    with trio.fail_after(DEADLINE):
        async with upstream(handler) as a, running_gateway({"alpha.test": forward_to(a)}, limits=limits) as gw:
            client = await gw.client()
            await client.send(get("/slow"), h11.EndOfMessage())
            response = await client.next_event()
            assert isinstance(response, h11.Response) and response.status_code == 200
            await client.next_event()
            await client.stream.aclose()
            await upstream_saw_close.wait()


async def test_twenty_megabytes_pass_byte_exact_both_ways() -> None:
    size = 20 * 1024 * 1024
    payload = random.Random(20).randbytes(size)

    async def streaming_echo(up: Upstream, stream: trio.SocketStream) -> None:
        # Answer at once and echo each piece as it arrives, so nothing is held whole.
        peer = Peer(stream, h11.SERVER)
        req = await peer.next_event()
        assert isinstance(req, h11.Request)
        await peer.send(h11.Response(status_code=200, headers=[(b"content-length", str(size).encode())]))
        while True:
            event = await peer.next_event()
            if isinstance(event, h11.EndOfMessage):
                break
            assert isinstance(event, h11.Data)
            await peer.send(event)
        await peer.send(h11.EndOfMessage())

    with trio.fail_after(DEADLINE * 2):
        async with upstream(streaming_echo) as a, running_gateway({"alpha.test": forward_to(a)}) as gw:
            client = await gw.client()
            post = h11.Request(
                method="PUT", target="/big", headers=[(b"host", b"alpha.test"), (b"content-length", str(size).encode())]
            )

            async def upload() -> None:
                await client.send(post)
                for start in range(0, size, 256 * 1024):
                    await client.send(h11.Data(data=payload[start : start + 256 * 1024]))
                await client.send(h11.EndOfMessage())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(upload)
                response, body = await client.read_response()
            assert response.status_code == 200
            assert len(body) == size
            assert hashlib.sha256(body).digest() == hashlib.sha256(payload).digest()
            await client.stream.aclose()


# -- WebSocket -----------------------------------------------------------------------


async def ws_echo_handler(up: Upstream, stream: trio.SocketStream) -> None:
    """A WebSocket upstream: wsproto answers the upgrade with 101 and echoes messages."""
    conn = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    while True:
        data = await stream.receive_some(65536)
        conn.receive_data(bytes(data) or None)
        for event in conn.events():
            if isinstance(event, ws.Request):
                seen = h11.Request(method="GET", target=event.target, headers=[("host", event.host)])
                up.requests.append((seen, b""))
                await stream.send_all(conn.send(ws.AcceptConnection()))
            elif isinstance(event, ws.TextMessage):
                await stream.send_all(conn.send(ws.Message(data=event.data)))
            elif isinstance(event, ws.CloseConnection):
                await stream.send_all(conn.send(event.response()))
                return
        if not data:
            return


async def websocket_echo_roundtrip(
    stream: trio.abc.Stream, host: str, messages: list[str], *, cookie: str | None = None
) -> list[str]:
    """Open a WebSocket over `stream` with wsproto, send `messages`, return the echoes."""
    conn = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    extra = [(b"cookie", cookie.encode())] if cookie is not None else []
    await stream.send_all(conn.send(ws.Request(host=host, target="/ws", extra_headers=extra)))
    echoes: list[str] = []
    accepted = False
    while len(echoes) < len(messages):
        data = await stream.receive_some(65536)
        assert data, "gateway closed the tunnel"
        conn.receive_data(bytes(data))
        for event in conn.events():
            if isinstance(event, ws.AcceptConnection):
                accepted = True
                for text in messages:
                    await stream.send_all(conn.send(ws.Message(data=text)))
            elif isinstance(event, ws.TextMessage):
                echoes.append(str(event.data))
            else:
                raise AssertionError(f"unexpected {event!r}")
    assert accepted
    await stream.send_all(conn.send(ws.CloseConnection(code=1000)))
    while conn.state is not wsproto.connection.ConnectionState.CLOSED:
        data = await stream.receive_some(65536)
        if not data:
            break
        conn.receive_data(bytes(data))
        list(conn.events())
    return echoes


async def test_websocket_over_plain_http() -> None:
    with trio.fail_after(DEADLINE):
        async with upstream(ws_echo_handler) as a, running_gateway({"alpha.test": forward_to(a)}) as gw:
            stream = await gw.connect()
            echoes = await websocket_echo_roundtrip(stream, "alpha.test", ["hello", "wörld"])
            assert echoes == ["hello", "wörld"]
            assert a.requests[0][0].target == b"/ws"
            await stream.aclose()


async def test_upgrade_tunnel_carries_raw_bytes_both_ways() -> None:
    async def raw_echo(up: Upstream, stream: trio.SocketStream) -> None:
        peer = Peer(stream, h11.SERVER)
        req = await peer.next_event()
        assert isinstance(req, h11.Request)
        up.requests.append((req, b""))
        assert await peer.next_event() == h11.EndOfMessage()
        headers = [(b"connection", b"upgrade"), (b"upgrade", b"x-raw")]
        # The first bytes of the new protocol travel in the same write as the 101.
        await stream.send_all(peer.conn.send(h11.InformationalResponse(status_code=101, headers=headers)) + b"hi:")
        data, _ = peer.conn.trailing_data
        while True:
            if data:
                await stream.send_all(data)
            data = await stream.receive_some(65536)
            if not data:
                return

    with trio.fail_after(DEADLINE):
        async with upstream(raw_echo) as a, running_gateway({"alpha.test": forward_to(a)}) as gw:
            stream = await gw.connect()
            head = b"GET /t HTTP/1.1\r\nHost: alpha.test\r\nConnection: Upgrade\r\nUpgrade: x-raw\r\n\r\n"
            await stream.send_all(head + b"early,")  # bytes right behind the head
            response = await stream.receive_some(65536)
            while b"\r\n\r\n" not in response:
                response += await stream.receive_some(65536)
            head_back, _, rest = bytes(response).partition(b"\r\n\r\n")
            assert head_back.startswith(b"HTTP/1.1 101 ")
            assert b"upgrade: x-raw" in head_back.lower()
            await stream.send_all(b"late")
            rest += await recv_exactly(stream, len(b"hi:early,late") - len(rest))
            assert rest == b"hi:early,late"
            [(req, _)] = a.requests
            assert header(req.headers, b"upgrade") == b"x-raw"
            assert header(req.headers, b"connection") == b"upgrade"
            await stream.aclose()


# -- errors --------------------------------------------------------------------------


async def test_refuse_answers_with_the_json_envelope_and_keeps_the_connection() -> None:
    refuse = Refuse(409, "sandbox_not_running", "sandbox sbx-x is paused")
    with trio.fail_after(DEADLINE):
        async with upstream() as a, running_gateway({"paused.test": refuse, "alpha.test": forward_to(a)}) as gw:
            client = await gw.client()
            response, body = await fetch(client, get(host=b"paused.test", headers=[(b"x-request-id", b"rid-1")]))
            assert response.status_code == 409
            assert header(response.headers, b"content-type") == b"application/json"
            assert header(response.headers, b"x-request-id") == b"rid-1"
            reply = echoed(body)
            assert reply["success"] is False
            assert reply["error"] == "sandbox_not_running"
            assert reply["message"] == "sandbox sbx-x is paused"
            assert reply["request_id"] == "rid-1"
            # a refusal is an ordinary answer: the same connection carries the next request
            response, _ = await fetch(client, get(host=b"alpha.test"))
            assert response.status_code == 200
            await client.stream.aclose()


async def test_refuse_renders_html_for_browsers() -> None:
    refuse = Refuse(409, "sandbox_not_running", "sandbox <sbx-x> is paused")
    with trio.fail_after(DEADLINE):
        async with running_gateway({"paused.test": refuse}) as gw:
            client = await gw.client()
            accept = (b"accept", b"text/html,application/xhtml+xml;q=0.9,*/*;q=0.8")
            response, body = await fetch(client, get(host=b"paused.test", headers=[accept]))
            assert response.status_code == 409
            assert header(response.headers, b"content-type") == b"text/html; charset=utf-8"
            assert b"<!doctype html>" in body
            assert b"sandbox &lt;sbx-x&gt; is paused" in body
            await client.stream.aclose()


async def test_refuse_with_a_small_body_discards_it_and_keeps_the_connection() -> None:
    with trio.fail_after(DEADLINE):
        async with running_gateway({}) as gw:
            client = await gw.client()
            post = h11.Request(
                method="POST", target="/", headers=[(b"host", b"nowhere.test"), (b"content-length", b"5")]
            )
            response, body = await fetch(client, post, b"hello")
            assert response.status_code == 404
            assert echoed(body)["error"] == "unknown_host"
            response, _ = await fetch(client, get(host=b"nowhere.test"))
            assert response.status_code == 404
            await client.stream.aclose()


async def test_nothing_listening_upstream_is_a_502_naming_the_port() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        free_port = sock.getsockname()[1]  # bound, never listening: connections are refused
        with trio.fail_after(DEADLINE):
            async with running_gateway({"alpha.test": forward_to(free_port)}) as gw:
                client = await gw.client()
                response, body = await fetch(client, get())
                assert response.status_code == 502
                reply = echoed(body)
                assert reply["error"] == "bad_gateway"
                assert f"port {free_port}" in str(reply["message"])
                await client.stream.aclose()


async def test_upstream_that_closes_without_answering_is_a_502() -> None:
    async def hang_up(up: Upstream, stream: trio.SocketStream) -> None:
        peer = Peer(stream, h11.SERVER)
        assert await peer.read_request() is not None

    with trio.fail_after(DEADLINE):
        async with upstream(hang_up) as a, running_gateway({"alpha.test": forward_to(a)}) as gw:
            client = await gw.client()
            response, body = await fetch(client, get())
            assert response.status_code == 502
            reply = echoed(body)
            assert reply["error"] == "bad_gateway"
            assert "closed the connection without answering" in str(reply["message"])
            assert a.accepted == 1  # a fresh connection is never replayed
            await client.stream.aclose()


async def test_upstream_that_answers_garbage_is_a_502() -> None:
    async def garbage(up: Upstream, stream: trio.SocketStream) -> None:
        peer = Peer(stream, h11.SERVER)
        assert await peer.read_request() is not None
        await stream.send_all(b"SMTP ready\r\n\r\n")

    with trio.fail_after(DEADLINE):
        async with upstream(garbage) as a, running_gateway({"alpha.test": forward_to(a)}) as gw:
            client = await gw.client()
            response, body = await fetch(client, get())
            assert response.status_code == 502
            assert "invalid response" in str(echoed(body)["message"])
            await client.stream.aclose()


async def test_upstream_that_stalls_is_a_504() -> None:
    async def stall(up: Upstream, stream: trio.SocketStream) -> None:
        peer = Peer(stream, h11.SERVER)
        assert await peer.read_request() is not None
        await trio.sleep_forever()

    with trio.fail_after(DEADLINE):
        async with (
            upstream(stall) as a,
            running_gateway({"alpha.test": forward_to(a)}, limits=quick_limits(upstream_idle_timeout=0.3)) as gw,
        ):
            client = await gw.client()
            started = trio.current_time()
            response, body = await fetch(client, get())
            assert response.status_code == 504
            assert 0.3 <= trio.current_time() - started < 1.0
            reply = echoed(body)
            assert reply["error"] == "gateway_timeout"
            assert "did not answer within 0.3 s" in str(reply["message"])
            await client.stream.aclose()


async def test_malformed_request_is_a_400_then_close() -> None:
    with trio.fail_after(DEADLINE):
        async with running_gateway({}) as gw:
            stream = await gw.connect()
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: alpha.test\r\nbad header line\r\n\r\n")
            raw = await read_until_eof(stream)
            head, _, body = raw.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400 ")
            assert b"connection: close" in head.lower()
            reply = echoed(body)
            assert reply["success"] is False and reply["error"] == "bad_request"
            await stream.aclose()


async def test_invalid_host_is_a_400() -> None:
    with trio.fail_after(DEADLINE):
        async with running_gateway({}) as gw:
            client = await gw.client()
            response, body = await fetch(client, get(host=b"bad_host!.test"))
            assert response.status_code == 400
            assert echoed(body)["error"] == "bad_host"
            response, body = await fetch(client, get(host=b"alpha.test:99999"))
            assert response.status_code == 400
            await client.stream.aclose()


async def early_answer_handler(up: Upstream, stream: trio.SocketStream) -> None:
    """Like the API refusing a key: 401 as soon as the head is in, the body read after."""
    peer = Peer(stream, h11.SERVER)
    while True:
        event = await peer.next_event()
        if isinstance(event, h11.ConnectionClosed):
            return
        assert isinstance(event, h11.Request), event
        up.requests.append((event, b""))
        await peer.respond(401, b"no key")
        await peer.read_body()
        if not peer.next_cycle():
            return


@pytest.mark.parametrize("tls", [False, True])
async def test_an_answer_before_the_request_body_ends_keeps_the_client_connection_usable(tls: bool) -> None:
    async with upstream(early_answer_handler) as up, running_gateway({"alpha.test": forward_to(up)}) as gw:
        stream = await gw.connect_tls() if tls else await gw.connect()
        client = Peer(stream, h11.CLIENT)
        post = h11.Request(
            method="POST", target="/v1/sandboxes", headers=[(b"host", b"alpha.test"), (b"content-length", b"2")]
        )
        await client.send(post)
        # The body comes after the head, in its own packet (as httpx sends it).
        await trio.sleep(0.05)
        await client.send(h11.Data(data=b"{}"), h11.EndOfMessage())
        response, body = await client.read_response()
        assert (response.status_code, body) == (401, b"no key")
        assert client.next_cycle()
        # The next request on the same connection is answered, not swallowed.
        with trio.fail_after(1.5):
            response, _ = await fetch(client, get("/again"))
        assert response.status_code == 401
        assert [r.target for r, _ in up.requests][-1] == b"/again"
        await stream.aclose()


async def answers_early_then_hangs(up: Upstream, stream: trio.SocketStream) -> None:
    """As hypercorn does: an answer before the body, and after it a connection that never
    answers again. A connection that answered early must not be pooled."""
    peer = Peer(stream, h11.SERVER)
    event = await peer.next_event()
    if isinstance(event, h11.ConnectionClosed):
        return
    assert isinstance(event, h11.Request), event
    up.requests.append((event, b""))
    await peer.respond(401, b"no key")
    if event.method == b"POST":
        await peer.read_body()
        await trio.sleep_forever()
    await peer.read_body()
    if peer.next_cycle():
        await answers_early_then_hangs(up, stream)


async def test_an_upstream_that_answered_before_the_body_is_not_reused() -> None:
    async with upstream(answers_early_then_hangs) as up, running_gateway({"alpha.test": forward_to(up)}) as gw:
        client = await gw.client()
        post = h11.Request(
            method="POST", target="/v1/sandboxes", headers=[(b"host", b"alpha.test"), (b"content-length", b"2")]
        )
        await client.send(post)
        await trio.sleep(0.05)
        await client.send(h11.Data(data=b"{}"), h11.EndOfMessage())
        response, _ = await client.read_response()
        assert response.status_code == 401 and client.next_cycle()
        with trio.fail_after(1.5):
            response, _ = await fetch(client, get("/next"))
        assert response.status_code == 401
        assert up.accepted == 2
        await client.stream.aclose()
