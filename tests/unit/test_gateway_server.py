"""gateway.server on loopback: TLS and plain HTTP on one port, deadlines, graceful drain."""

from __future__ import annotations

import contextlib

import h11
import trio

from gateway.server import GatewayLimits
from tests.unit.test_gateway_proxy import (
    DEADLINE,
    Peer,
    Upstream,
    echoed,
    echoed_headers,
    fetch,
    forward_to,
    get,
    header,
    quick_limits,
    read_until_eof,
    running_gateway,
    upstream,
    websocket_echo_roundtrip,
    ws_echo_handler,
)

# -- one port, two protocols -----------------------------------------------------------


async def test_plain_http_and_tls_share_one_port() -> None:
    with trio.fail_after(DEADLINE):
        async with upstream() as a, running_gateway({"alpha.test": forward_to(a)}) as gw:
            tls = Peer(await gw.connect_tls("alpha.test"), h11.CLIENT)
            response, body = await fetch(tls, get("/secure"))
            assert response.status_code == 200
            assert echoed_headers(body)["x-forwarded-proto"] == ["https"]
            plain = await gw.client()
            response, body = await fetch(plain, get("/plain"))
            assert response.status_code == 200
            assert echoed_headers(body)["x-forwarded-proto"] == ["http"]
            # keep-alive holds over TLS too
            response, body = await fetch(tls, get("/secure-again"))
            assert echoed(body)["target"] == "/secure-again"
            await tls.stream.aclose()
            await plain.stream.aclose()


async def test_tls_negotiates_http11_and_carries_the_gateways_own_errors() -> None:
    with trio.fail_after(DEADLINE):
        async with running_gateway({}) as gw:
            tls = await gw.connect_tls("beta.test")
            assert tls.selected_alpn_protocol() == "http/1.1"
            # the gateway answers its own errors over TLS as well
            peer = Peer(tls, h11.CLIENT)
            response, body = await fetch(peer, get(host=b"beta.test"))
            assert response.status_code == 404
            assert echoed(body)["error"] == "unknown_host"
            await tls.aclose()


async def test_websocket_over_tls() -> None:
    with trio.fail_after(DEADLINE):
        async with upstream(ws_echo_handler) as a, running_gateway({"alpha.test": forward_to(a)}) as gw:
            tls = await gw.connect_tls("alpha.test")
            assert await websocket_echo_roundtrip(tls, "alpha.test", ["over tls", "twice"]) == ["over tls", "twice"]
            await tls.aclose()


async def test_an_upstream_closing_a_tunnel_closes_the_tls_client_at_once() -> None:
    # TLS cannot carry a half-close, so the upstream's end of the tunnel must end it
    # for the client too, not leave it waiting for the tunnel's idle timeout.
    async def say_bye_and_close(up: Upstream, stream: trio.SocketStream) -> None:
        peer = Peer(stream, h11.SERVER)
        assert isinstance(await peer.next_event(), h11.Request)
        assert await peer.next_event() == h11.EndOfMessage()
        switch = h11.InformationalResponse(status_code=101, headers=[(b"connection", b"upgrade"), (b"upgrade", b"x")])
        await stream.send_all(peer.conn.send(switch) + b"bye")

    head = b"GET /t HTTP/1.1\r\nHost: alpha.test\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n"
    with trio.fail_after(DEADLINE):
        async with (
            upstream(say_bye_and_close) as a,
            running_gateway({"alpha.test": forward_to(a)}, limits=quick_limits(tunnel_idle_timeout=30)) as gw,
        ):
            for stream in (await gw.connect_tls(), await gw.connect()):
                await stream.send_all(head)
                received = await read_until_eof(stream)
                assert received.startswith(b"HTTP/1.1 101 ")
                assert received.endswith(b"\r\n\r\nbye")
                await stream.aclose()


async def test_a_failed_tls_handshake_drops_only_that_connection() -> None:
    with trio.fail_after(DEADLINE):
        async with upstream() as a, running_gateway({"alpha.test": forward_to(a)}) as gw:
            bad = await gw.connect()
            await bad.send_all(b"\x16\x03\x01\x00\x05hello, not a ClientHello")
            assert await read_until_eof(bad) == b""
            await bad.aclose()
            plain = await gw.client()
            response, _ = await fetch(plain, get())
            assert response.status_code == 200
            await plain.stream.aclose()


# -- deadlines -----------------------------------------------------------------------


async def test_a_connection_that_sends_nothing_is_closed_after_the_sniff_timeout() -> None:
    limits = GatewayLimits(sniff_timeout=0.3, handshake_timeout=1.0, drain_timeout=1.0, http=quick_limits().http)
    with trio.fail_after(DEADLINE):
        async with running_gateway({}, limits=limits) as gw:
            stream = await gw.connect()
            started = trio.current_time()
            assert await read_until_eof(stream) == b""
            assert 0.3 <= trio.current_time() - started < 1.0
            await stream.aclose()


async def test_a_client_that_never_finishes_its_head_is_cut_off() -> None:
    with trio.fail_after(DEADLINE):
        async with running_gateway({}, limits=quick_limits(head_timeout=0.5)) as gw:
            stream = await gw.connect()
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: alpha.te")
            started = trio.current_time()
            assert await read_until_eof(stream) == b""
            assert 0.4 <= trio.current_time() - started < 1.0
            await stream.aclose()


async def test_a_client_trickling_its_head_is_cut_off_at_the_head_deadline() -> None:
    with trio.fail_after(DEADLINE):
        async with running_gateway({}, limits=quick_limits(head_timeout=0.5)) as gw:
            stream = await gw.connect()
            await stream.send_all(b"GET / HTTP/1.1\r\n")
            started = trio.current_time()

            async def trickle() -> None:
                # a byte well within every per-read deadline, never the end of the head
                try:
                    while True:
                        await trio.sleep(0.05)
                        await stream.send_all(b"x")
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

            async with trio.open_nursery() as nursery:
                nursery.start_soon(trickle)
                with contextlib.suppress(trio.BrokenResourceError):  # a reset is as good as a close
                    assert await read_until_eof(stream) == b""
                nursery.cancel_scope.cancel()
            assert trio.current_time() - started < 1.0
            await stream.aclose()


async def test_a_client_that_stalls_mid_body_is_cut_off() -> None:
    async def wait_for_body(up: Upstream, stream: trio.SocketStream) -> None:
        peer = Peer(stream, h11.SERVER)
        await peer.read_request()

    with trio.fail_after(DEADLINE):
        async with (
            upstream(wait_for_body) as a,
            running_gateway({"alpha.test": forward_to(a)}, limits=quick_limits(body_idle_timeout=0.3)) as gw,
        ):
            client = await gw.client()
            post = h11.Request(
                method="POST", target="/", headers=[(b"host", b"alpha.test"), (b"content-length", b"10")]
            )
            await client.send(post, h11.Data(data=b"abc"))
            started = trio.current_time()
            # Nothing of the response had gone out: the client is told why (408), then closed.
            raw = await read_until_eof(client.stream)
            assert 0.3 <= trio.current_time() - started < 1.0
            head, _, body = raw.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408 ")
            assert b"connection: close" in head.lower()
            assert echoed(body)["error"] == "request_timeout"
            await client.stream.aclose()


# -- graceful drain ------------------------------------------------------------------


async def test_drain_lets_the_request_in_flight_finish_and_refuses_new_connections() -> None:
    arrived, release = trio.Event(), trio.Event()

    async def slow(up: Upstream, stream: trio.SocketStream) -> None:
        peer = Peer(stream, h11.SERVER)
        assert await peer.read_request() is not None
        arrived.set()
        await release.wait()
        await peer.respond(200, b"finished")

    with trio.fail_after(DEADLINE):
        async with upstream(slow) as a, running_gateway({"alpha.test": forward_to(a)}) as gw:
            client = await gw.client()
            await client.send(get(), h11.EndOfMessage())
            await arrived.wait()
            gw.shutdown.set()
            await trio.sleep(0.05)
            assert not gw.stopped.is_set()
            try:
                late = await gw.connect()
            except OSError:
                pass
            else:
                await late.aclose()
                raise AssertionError("a new connection was accepted after shutdown")
            release.set()
            response, body = await client.read_response()
            assert (response.status_code, body) == (200, b"finished")
            assert header(response.headers, b"connection") == b"close"
            assert await read_until_eof(client.stream) == b""
            await gw.stopped.wait()
            await client.stream.aclose()


async def test_drain_closes_idle_keep_alive_connections_at_once() -> None:
    with trio.fail_after(DEADLINE):
        async with upstream() as a, running_gateway({"alpha.test": forward_to(a)}) as gw:
            idle = await gw.client()
            response, _ = await fetch(idle, get())
            assert response.status_code == 200
            silent = await gw.connect()  # connected, not a byte sent yet
            await trio.sleep(0.05)
            started = trio.current_time()
            gw.shutdown.set()
            assert await read_until_eof(idle.stream) == b""
            assert await read_until_eof(silent) == b""
            await gw.stopped.wait()
            # well inside keepalive_timeout (5 s) and drain_timeout (1 s)
            assert trio.current_time() - started < 0.5
            await idle.stream.aclose()
            await silent.aclose()


async def test_drain_gives_up_on_a_request_that_outlasts_the_drain_timeout() -> None:
    arrived = trio.Event()

    async def never(up: Upstream, stream: trio.SocketStream) -> None:
        peer = Peer(stream, h11.SERVER)
        assert await peer.read_request() is not None
        arrived.set()
        await trio.sleep_forever()

    limits = GatewayLimits(sniff_timeout=1.0, handshake_timeout=1.0, drain_timeout=0.3, http=quick_limits().http)
    with trio.fail_after(DEADLINE):
        async with upstream(never) as a, running_gateway({"alpha.test": forward_to(a)}, limits=limits) as gw:
            client = await gw.client()
            await client.send(get(), h11.EndOfMessage())
            await arrived.wait()
            started = trio.current_time()
            gw.shutdown.set()
            await gw.stopped.wait()
            assert 0.3 <= trio.current_time() - started < 0.8
            assert await read_until_eof(client.stream) == b""
            await client.stream.aclose()
