"""agent.http on loopback: keep-alive, deadlines, limits, streamed bodies both ways, disconnects."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent.http import HttpError, HttpServer, Request, Response, Routes
from tests.unit.agent_helpers import closed_by_peer, exchange, read_chunk, read_head, read_response, serve


class App:
    """Test routes, plus what their handlers observed."""

    def __init__(self) -> None:
        self.routes = Routes()
        self.chunks: list[bytes] = []
        self.stream_cancelled = asyncio.Event()
        self.disconnected_seen = False
        self.gate = asyncio.Event()
        add = self.routes.add
        add("GET", "/ok", self.ok)
        add("POST", "/ok", self.ok)
        add("GET", "/boom", self.boom)
        add("POST", "/chunks", self.collect_chunks)
        add("POST", "/read", self.read_limited)
        add("POST", "/ignore", self.ignore_body)
        add("GET", "/stream", self.stream)
        add("GET", "/sized", self.sized_stream)
        add("GET", "/forever", self.forever)
        add("GET", "/broken", self.broken_stream)
        self.routes.add_prefix("GET", "/files/", self.echo_path)
        self.routes.add_prefix("GET", "/files/special/", self.special)

    async def ok(self, request: Request) -> Response:
        body = await request.read()
        return Response(200, headers=[("Content-Type", "text/plain")], body=b"ok:" + body)

    async def boom(self, request: Request) -> Response:
        raise RuntimeError("handler failed")

    async def collect_chunks(self, request: Request) -> Response:
        total = 0
        async for chunk in request.body():
            self.chunks.append(chunk)
            total += len(chunk)
        return Response(200, body=str(total).encode())

    async def read_limited(self, request: Request) -> Response:
        return Response(200, body=await request.read(10))

    async def ignore_body(self, request: Request) -> Response:
        return Response(200, body=b"ignored")

    async def stream(self, request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield b"first;"
            await self.gate.wait()  # the client must see the first chunk before this opens
            yield b"second"

        return Response(200, headers=[("Content-Type", "text/plain")], body=body())

    async def sized_stream(self, request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield b"abc"
            yield b"de"

        return Response(200, headers=[("Content-Length", "5")], body=body())

    async def forever(self, request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            try:
                yield b"tick"
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                self.disconnected_seen = request.disconnected.is_set()
                self.stream_cancelled.set()
                raise

        return Response(200, body=body())

    async def broken_stream(self, request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield b"partial"
            raise RuntimeError("producer failed")

        return Response(200, body=body())

    async def echo_path(self, request: Request) -> Response:
        return Response(200, body=json.dumps({"path": request.path, "query": request.query}).encode())

    async def special(self, request: Request) -> Response:
        return Response(200, body=b"longest prefix")


def run(scenario: Any, app: App | None = None, **options: Any) -> Any:
    app = app or App()
    return serve(app.routes, lambda port: scenario(port, app), **options)


def test_keep_alive_and_pipelining() -> None:
    async def scenario(port: int, app: App) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await read_response(reader) == (200, {"content-type": "text/plain", "content-length": "3"}, b"ok:")
        writer.write(
            b"POST /ok HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi"
            b"HEAD /ok HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        assert (await read_response(reader))[2] == b"ok:hi"
        status, headers, _ = await read_response(reader, head_only=True)
        assert (status, headers["content-length"]) == (200, "3")
        assert (await read_response(reader))[2] == b"ok:"
        writer.close()

    run(scenario)


def test_connection_close_and_http10() -> None:
    async def scenario(port: int, app: App) -> None:
        for request in [b"GET /ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", b"GET /ok HTTP/1.0\r\n\r\n"]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            _, headers, body = await read_response(reader)
            assert (headers["connection"], body) == ("close", b"ok:")
            assert await closed_by_peer(reader)
            writer.close()

    run(scenario)


def test_routes_404_405_500() -> None:
    async def scenario(port: int, app: App) -> None:
        (s404, h404, b404), (s405, h405, b405), (s500, _, b500) = await exchange(
            port,
            b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n"
            b"DELETE /ok HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /boom HTTP/1.1\r\nHost: t\r\n\r\n",
            responses=3,
        )
        assert (s404, json.loads(b404)["code"], h404["content-type"]) == (404, "not_found", "application/json")
        assert (s405, json.loads(b405)["code"], h405["allow"]) == (405, "method_not_allowed", "GET, HEAD, POST")
        assert json.loads(b500) == {"code": "internal", "message": "internal error"}
        assert s500 == 500

    run(scenario)


def test_prefix_routes_decoded_path_and_query() -> None:
    async def scenario(port: int, app: App) -> None:
        [(_, _, body), (_, _, special)] = await exchange(
            port,
            b"GET /files/a%20b/%C3%A9/%FF?x=1&x=2&y=a+b&e=&z=%2F HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /files/special/x HTTP/1.1\r\nHost: t\r\n\r\n",
            responses=2,
        )
        parsed = json.loads(body)
        # Bytes that are not UTF-8 survive as surrogates, as os.fsdecode makes them.
        assert parsed["path"] == "/files/a b/\u00e9/\udcff"
        assert parsed["query"] == {"x": ["1", "2"], "y": ["a b"], "e": [""], "z": ["/"]}
        assert special == b"longest prefix"

    run(scenario)


def test_malformed_gets_400_and_close() -> None:
    async def scenario(port: int, app: App) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"NOT HTTP AT ALL\r\n\r\nGET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert (status, headers["connection"], json.loads(body)["code"]) == (400, "close", "bad_request")
        assert await closed_by_peer(reader)
        writer.close()

    run(scenario)


def test_nul_in_path_is_400_but_keeps_the_connection() -> None:
    async def scenario(port: int, app: App) -> None:
        [(status, _, body), (status2, _, _)] = await exchange(
            port, b"GET /files/a%00b HTTP/1.1\r\nHost: t\r\n\r\nGET /ok HTTP/1.1\r\nHost: t\r\n\r\n", responses=2
        )
        assert (status, json.loads(body)["code"], status2) == (400, "bad_request", 200)

    run(scenario)


def test_head_cap_431_reaches_a_client_still_sending() -> None:
    async def scenario(port: int, app: App) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /ok HTTP/1.1\r\nHost: t\r\nX: " + b"a" * 100_000)
        status, _, body = await read_response(reader)
        assert (status, json.loads(body)["code"]) == (431, "headers_too_large")
        writer.close()

    run(scenario)


def test_slow_head_gets_408() -> None:
    async def scenario(port: int, app: App) -> float:
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = loop.time()
        writer.write(b"GET /ok HTTP/1.1\r\nHost: t\r\n")
        await asyncio.sleep(0.1)
        writer.write(b"X: trickle\r\n")  # progress does not extend the deadline
        status, _, body = await read_response(reader)
        assert (status, json.loads(body)["code"]) == (408, "request_timeout")
        assert await closed_by_peer(reader)
        writer.close()
        return loop.time() - started

    elapsed = run(scenario, head_timeout=0.3)
    assert 0.25 < elapsed < 2.5


def test_idle_connection_is_closed_silently() -> None:
    async def scenario(port: int, app: App) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
        await read_response(reader)
        assert await asyncio.wait_for(reader.read(), 3) == b""  # no unsolicited 408
        writer.close()

    run(scenario, idle_timeout=0.2)


def test_stalled_body_gets_408() -> None:
    async def scenario(port: int, app: App) -> None:
        [(status, _, body)] = await exchange(port, b"POST /chunks HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        assert (status, json.loads(body)["code"]) == (408, "request_timeout")

    run(scenario, body_timeout=0.2)


def test_read_limit_413_before_reading_and_while_reading() -> None:
    async def scenario(port: int, app: App) -> None:
        [(status, _, body)] = await exchange(port, b"POST /read HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n")
        assert (status, json.loads(body)["code"]) == (413, "payload_too_large")
        chunked = (
            b"POST /read HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"6\r\nabcdef\r\n6\r\nghijkl\r\n0\r\n\r\n"
        )
        [(status, _, _)] = await exchange(port, chunked)
        assert status == 413
        [(status, _, body)] = await exchange(
            port, b"POST /read HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n0123456789"
        )
        assert (status, body) == (200, b"0123456789")

    run(scenario)


def test_chunked_upload_streams_through_body() -> None:
    async def scenario(port: int, app: App) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /chunks HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        for _ in range(100):  # the handler sees the first chunk before the rest is even sent
            if app.chunks:
                break
            await asyncio.sleep(0.01)
        assert app.chunks == [b"hello"]
        writer.write(b"6\r\n world\r\n0\r\n\r\n")
        status, _, body = await read_response(reader)
        assert (status, body) == (200, b"11")
        assert b"".join(app.chunks) == b"hello world"
        writer.close()

    run(scenario)


def test_large_upload_with_backpressure() -> None:
    size = 8 * 1024 * 1024

    async def scenario(port: int, app: App) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"POST /chunks HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\n\r\n".encode())
        block = b"x" * 65536
        for _ in range(size // len(block)):
            writer.write(block)
            await writer.drain()
        status, _, body = await read_response(reader)
        assert (status, int(body)) == (200, size)
        # Nothing larger than the inbox ever reached the handler in one piece.
        assert max(len(c) for c in app.chunks) <= 512 * 1024
        writer.close()

    run(scenario)


def test_expect_100_continue() -> None:
    async def scenario(port: int, app: App) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /chunks HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        status, _ = await read_head(reader)
        assert status == 100
        writer.write(b"abc")
        status, _, body = await read_response(reader)
        assert (status, body) == (200, b"3")
        writer.close()

    run(scenario)


def test_unread_body_is_skipped_when_small_and_closes_when_large() -> None:
    async def scenario(port: int, app: App) -> None:
        [(s1, _, b1), (s2, _, b2)] = await exchange(
            port,
            b"POST /ignore HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhelloGET /ok HTTP/1.1\r\nHost: t\r\n\r\n",
            responses=2,
        )
        assert (s1, b1, s2, b2) == (200, b"ignored", 200, b"ok:")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /ignore HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\n\r\n" + b"x" * 600_000)
        status, _, body = await read_response(reader)
        assert (status, body) == (200, b"ignored")
        assert await closed_by_peer(reader)  # after a linger, not a reset that would eat the reply
        writer.close()

    run(scenario)


def test_streamed_response_flushes_each_chunk() -> None:
    async def scenario(port: int, app: App) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers = await read_head(reader)
        assert (status, headers["transfer-encoding"]) == (200, "chunked")
        assert await asyncio.wait_for(read_chunk(reader), 3) == b"first;"
        app.gate.set()
        assert await read_chunk(reader) == b"second"
        assert await read_chunk(reader) is None
        writer.write(b"GET /sized HTTP/1.1\r\nHost: t\r\n\r\n")  # and the connection carries on
        status, headers, body = await read_response(reader)
        assert (headers["content-length"], "transfer-encoding" in headers, body) == ("5", False, b"abcde")
        writer.write(b"HEAD /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        status, _, _ = await read_response(reader, head_only=True)
        assert status == 200
        writer.close()

    run(scenario)


def test_streamed_response_to_http10_ends_with_close() -> None:
    async def scenario(port: int, app: App) -> None:
        app.gate.set()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /stream HTTP/1.0\r\n\r\n")
        _, headers = await read_head(reader)
        assert "transfer-encoding" not in headers
        assert await reader.read() == b"first;second"
        writer.close()

    run(scenario)


def test_client_disconnect_cancels_a_stream() -> None:
    async def scenario(port: int, app: App) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /forever HTTP/1.1\r\nHost: t\r\n\r\n")
        await read_head(reader)
        assert await read_chunk(reader) == b"tick"
        writer.close()
        await asyncio.wait_for(app.stream_cancelled.wait(), 3)
        assert app.disconnected_seen

    run(scenario)


def test_a_failing_stream_cuts_the_response() -> None:
    async def scenario(port: int, app: App) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /broken HTTP/1.1\r\nHost: t\r\n\r\n")
        await read_head(reader)
        assert await read_chunk(reader) == b"partial"
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await read_chunk(reader)  # no last chunk: the client knows the body is incomplete
        writer.close()

    run(scenario)


def test_handler_http_error_is_rendered() -> None:
    async def refuse(request: Request) -> Response:
        raise HttpError(403, "permission_denied", "no", headers=[("X-Why", "test")])

    async def scenario(port: int) -> None:
        [(status, headers, body)] = await exchange(port, b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (status, headers["x-why"], json.loads(body)) == (
            403,
            "test",
            {"code": "permission_denied", "message": "no"},
        )

    routes = Routes()
    routes.add("GET", "/x", refuse)
    serve(routes, scenario)


def test_close_drops_idle_connections_and_finishes_requests_in_flight() -> None:
    async def main() -> None:
        app = App()
        server = HttpServer(app.routes)
        [(_, port)] = await server.listen(0, host="127.0.0.1", ipv6_host=None)
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        idle_writer.write(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
        await read_response(idle_reader)
        busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", port)
        busy_writer.write(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        await read_head(busy_reader)
        assert await read_chunk(busy_reader) == b"first;"
        closing = asyncio.ensure_future(server.close(timeout=3))
        assert await closed_by_peer(idle_reader)
        app.gate.set()
        assert await read_chunk(busy_reader) == b"second"
        assert await read_chunk(busy_reader) is None
        assert await closed_by_peer(busy_reader)
        await closing
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
        idle_writer.close()
        busy_writer.close()

    asyncio.run(main())


def test_close_aborts_requests_that_outlive_the_grace() -> None:
    async def main() -> None:
        app = App()
        server = HttpServer(app.routes)
        [(_, port)] = await server.listen(0, host="127.0.0.1", ipv6_host=None)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /forever HTTP/1.1\r\nHost: t\r\n\r\n")
        await read_head(reader)
        assert await read_chunk(reader) == b"tick"
        await server.close(timeout=0.2)
        assert app.stream_cancelled.is_set()
        assert await closed_by_peer(reader)
        writer.close()

    asyncio.run(main())


def test_ipv6_listener_when_available() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")

    async def main() -> None:
        server = HttpServer(App().routes)
        bound = await server.listen(0, host="127.0.0.1", ipv6_host="::1")
        try:
            if len(bound) < 2:
                pytest.skip("IPv6 is not configured on this machine")
            port = bound[1][1]
            reader, writer = await asyncio.open_connection("::1", port)
            writer.write(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
            assert (await read_response(reader))[0] == 200
            writer.close()
        finally:
            await server.close()

    asyncio.run(main())


def test_accepted_connections_send_without_delay() -> None:
    """Small answers must not wait for the client's delayed ACK (Nagle): TCP_NODELAY is on."""

    async def main() -> int:
        app = App()
        server = HttpServer(app.routes)
        [(_, port)] = await server.listen(0, host="127.0.0.1", ipv6_host=None)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
            await read_response(reader)
            [connection] = server.connections
            sock = connection._transport.get_extra_info("socket")
            writer.close()
            return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        finally:
            await server.close()

    assert asyncio.run(main()) == 1
