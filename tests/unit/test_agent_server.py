"""agent.server in-process on loopback: keep-alive, deadlines, caps, routes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from agent.http1 import Request, Response
from agent.server import HttpServer, Routes

Scenario = Callable[[int], Awaitable[Any]]


async def _ok(request: Request) -> Response:
    return Response(200, headers=[("Content-Type", "text/plain")], body=b"ok:" + request.body)


async def _boom(request: Request) -> Response:
    raise RuntimeError("handler failed")


def serve(scenario: Scenario, **server_options: Any) -> Any:
    """Run ``scenario(port)`` against a server on 127.0.0.1 with the test routes."""

    async def main() -> Any:
        routes = Routes()
        routes.add("GET", "/ok", _ok)
        routes.add("POST", "/ok", _ok)
        routes.add("GET", "/boom", _boom)
        server = HttpServer(routes, **server_options)
        [(_, port)] = await server.listen(0, host="127.0.0.1", ipv6_host=None)
        try:
            return await asyncio.wait_for(scenario(port), 10)
        finally:
            await server.close()

    return asyncio.run(main())


async def read_response(reader: asyncio.StreamReader, *, head: bool = False) -> tuple[int, dict[str, str], bytes]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = b"" if head else await reader.readexactly(length)
    return status, headers, body


async def exchange(port: int, data: bytes, *, responses: int = 1) -> list[tuple[int, dict[str, str], bytes]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return [await read_response(reader) for _ in range(responses)]
    finally:
        writer.close()


async def closed_by_peer(reader: asyncio.StreamReader, within: float = 3.0) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), within) == b""
    except ConnectionError:
        return True


def test_keep_alive_and_pipelining() -> None:
    async def scenario(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await read_response(reader) == (200, {"content-type": "text/plain", "content-length": "3"}, b"ok:")
        writer.write(
            b"POST /ok HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiHEAD /ok HTTP/1.1\r\n\r\nGET /ok HTTP/1.1\r\n\r\n"
        )
        assert (await read_response(reader))[2] == b"ok:hi"
        status, headers, _ = await read_response(reader, head=True)
        assert (status, headers["content-length"]) == (200, "3")
        assert (await read_response(reader))[2] == b"ok:"
        writer.close()

    serve(scenario)


def test_connection_close_and_http10() -> None:
    async def scenario(port: int) -> None:
        for request, connection in [
            (b"GET /ok HTTP/1.1\r\nConnection: close\r\n\r\n", "close"),
            (b"GET /ok HTTP/1.0\r\n\r\n", "close"),
        ]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            _, headers, _ = await read_response(reader)
            assert headers["connection"] == connection
            assert await closed_by_peer(reader)
            writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /ok HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" * 2)
        for _ in range(2):
            _, headers, _ = await read_response(reader)
            assert headers["connection"] == "keep-alive"
        writer.close()

    serve(scenario)


def test_routes_404_405_500() -> None:
    async def scenario(port: int) -> None:
        (s404, h404, b404), (s405, h405, b405), (s500, _, b500) = await exchange(
            port,
            b"GET /nope HTTP/1.1\r\n\r\nDELETE /ok HTTP/1.1\r\n\r\nGET /boom HTTP/1.1\r\n\r\n",
            responses=3,
        )
        assert (s404, json.loads(b404)["code"], h404["content-type"]) == (404, "not_found", "application/json")
        assert (s405, json.loads(b405)["code"], h405["allow"]) == (405, "method_not_allowed", "GET, HEAD, POST")
        assert (s500, json.loads(b500)["code"]) == (500, "internal")

    serve(scenario)


def test_malformed_gets_400_and_close() -> None:
    async def scenario(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"NOT HTTP AT ALL\r\n\r\nGET /ok HTTP/1.1\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert (status, headers["connection"], json.loads(body)["code"]) == (400, "close", "bad_request")
        assert await closed_by_peer(reader)
        writer.close()

    serve(scenario)


def test_head_cap_431_reaches_a_client_still_sending() -> None:
    async def scenario(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /ok HTTP/1.1\r\nX: " + b"a" * 100_000)
        status, _, body = await read_response(reader)
        assert (status, json.loads(body)["code"]) == (431, "headers_too_large")
        writer.close()

    serve(scenario)


def test_slow_head_gets_408() -> None:
    async def scenario(port: int) -> float:
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = loop.time()
        writer.write(b"GET /ok HTTP/1.1\r\n")
        await asyncio.sleep(0.1)
        writer.write(b"X: trickle\r\n")  # progress does not extend the deadline
        status, _, body = await read_response(reader)
        assert (status, json.loads(body)["code"]) == (408, "request_timeout")
        assert await closed_by_peer(reader)
        writer.close()
        return loop.time() - started

    elapsed = serve(scenario, head_timeout=0.3)
    assert 0.25 < elapsed < 2.5


def test_idle_connection_is_closed_silently() -> None:
    async def scenario(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /ok HTTP/1.1\r\n\r\n")
        await read_response(reader)
        assert await asyncio.wait_for(reader.read(), 3) == b""  # no unsolicited 408
        writer.close()

    serve(scenario, idle_timeout=0.2)


def test_body_cap_413() -> None:
    async def scenario(port: int) -> None:
        [(status, _, body)] = await exchange(port, b"POST /ok HTTP/1.1\r\nContent-Length: 100\r\n\r\n")
        assert (status, json.loads(body)["code"]) == (413, "payload_too_large")

    serve(scenario, max_body=10)


def test_close_drops_open_connections() -> None:
    async def main() -> None:
        routes = Routes()
        server = HttpServer(routes)
        [(_, port)] = await server.listen(0, host="127.0.0.1", ipv6_host=None)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /x HTTP/1.1\r\n\r\n")
        await read_response(reader)
        await server.close()
        assert await closed_by_peer(reader)
        writer.close()

    asyncio.run(main())
