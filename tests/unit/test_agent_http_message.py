"""agent.http without sockets: targets, queries, body reads, the routes table and its guard."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import Any

import pytest

from agent.http import HttpError, Request, Response, Routes
from agent.http.message import parse_query, parse_target


def request(method: str = "GET", target: str = "/", headers: list[tuple[str, str]] | None = None, **kw: Any) -> Request:
    return Request(method=method, target=target, headers=headers or [], **kw)


def run(awaitable: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await awaitable

    return asyncio.run(main())


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/a/b?x=1", ("/a/b", "x=1")),
        ("/a%2Fb%20c", ("/a/b c", "")),
        ("/caf%C3%A9", ("/caf\u00e9", "")),
        ("/raw-\xc3\xa9", ("/raw-\u00e9", "")),  # unencoded UTF-8 bytes, seen as latin-1 text
        ("/bad-%FF", ("/bad-\udcff", "")),
        ("/a#frag", ("/a", "")),
        ("/a?q=1#frag", ("/a", "q=1")),
        ("http://host:8888/x?y", ("/x", "y")),
        ("http://host", ("/", "")),
    ],
)
def test_parse_target(target: str, expected: tuple[str, str]) -> None:
    assert parse_target("GET", target) == expected


@pytest.mark.parametrize("target", ["x", "ftp://h/x", "/a%00b"])
def test_parse_target_rejects(target: str) -> None:
    with pytest.raises(HttpError) as caught:
        parse_target("GET", target)
    assert caught.value.status == 400


def test_parse_query() -> None:
    assert parse_query("a=1&a=2&b=&c=x+y&d=%2F%C3%A9") == {"a": ["1", "2"], "b": [""], "c": ["x y"], "d": ["/\u00e9"]}
    assert parse_query("p=\xc3\xa9") == {"p": ["\u00e9"]}  # raw UTF-8 bytes
    assert parse_query("") == {}


def test_options_star() -> None:
    assert request("OPTIONS", "*").path == "*"


def fake_body(*chunks: bytes) -> Any:
    pending = list(chunks)

    async def receive() -> bytes | None:
        return pending.pop(0) if pending else None

    return receive


def test_read_and_body() -> None:
    req = request("POST", "/", receive=fake_body(b"ab", b"", b"cd"))
    assert run(req.read()) == b"abcd"
    with pytest.raises(RuntimeError):
        run(req.read())  # a body is read once

    async def collect(req: Request) -> list[bytes]:
        return [chunk async for chunk in req.body()]

    assert run(collect(request("POST", "/", receive=fake_body(b"x", b"y")))) == [b"x", b"y"]
    assert run(request("GET", "/").read()) == b""


def test_read_limits() -> None:
    with pytest.raises(HttpError) as caught:
        run(request("POST", "/", receive=fake_body(b"12345", b"67890"), default_limit=8).read())
    assert caught.value.status == 413
    declared = request("POST", "/", [("content-length", "100")], receive=fake_body())
    with pytest.raises(HttpError):
        run(declared.read(10))  # refused from the header, before any read
    assert run(request("POST", "/", receive=fake_body(b"12345")).read(5)) == b"12345"


def test_header_and_query_value() -> None:
    req = request(target="/?u=a&u=b", headers=[("x-a", "1"), ("x-a", "2")])
    assert (req.header("x-a"), req.header("x-b"), req.query_value("u"), req.query_value("v")) == ("1", None, "a", None)


def answer(name: str) -> Any:
    async def handler(request: Request) -> Response:
        return Response(200, body=name.encode())

    return handler


def test_routes_lookup_order_and_methods() -> None:
    async def main() -> None:
        routes = Routes()
        routes.add("GET", "/download/exact", answer("exact"))
        routes.add_prefix("GET", "/download/", answer("prefix"))
        routes.add_prefix("GET", "/download/deep/", answer("deeper"))
        routes.add_pattern("POST", r"/[a-z]+\.[A-Za-z]+/[A-Za-z]+", answer("pattern"))
        routes.add_pattern("PUT", r"/[a-z]+\.[A-Za-z]+/[A-Za-z]+", answer("pattern-put"))

        async def body(method: str, path: str) -> tuple[int, bytes]:
            response = await routes(request(method, path))
            assert isinstance(response.body, bytes)
            return response.status, response.body

        assert await body("GET", "/download/exact") == (200, b"exact")
        assert await body("GET", "/download/x") == (200, b"prefix")
        assert await body("GET", "/download/deep/x") == (200, b"deeper")
        assert await body("HEAD", "/download/x") == (200, b"prefix")
        assert await body("POST", "/pkg.Service/Method") == (200, b"pattern")
        assert await body("PUT", "/pkg.Service/Method") == (200, b"pattern-put")
        assert (await body("POST", "/pkg.Service/Method/extra"))[0] == 404
        status, text = await body("GET", "/pkg.Service/Method")
        assert (status, json.loads(text)["code"]) == (405, "method_not_allowed")
        response = await routes(request("DELETE", "/download/x"))
        assert dict(response.headers)["Allow"] == "GET, HEAD"

    run(main())


def test_guard_runs_first_and_errors_render_per_route() -> None:
    seen: list[object] = []

    def guard(req: Request, policy: object) -> None:
        seen.append(policy)
        if policy == "closed":
            raise HttpError(401, "unauthenticated", "no entry")
        req.auth = f"granted:{policy}"

    async def handler(req: Request) -> Response:
        return Response(200, body=str(req.auth).encode())

    def custom(req: Request, exc: HttpError) -> Response:
        return Response(299, body=exc.code.encode())

    async def main() -> None:
        routes = Routes(guard=guard)
        routes.add("GET", "/open", handler, auth="open")
        routes.add("GET", "/closed", handler, auth="closed")
        routes.add("GET", "/custom", handler, auth="closed", errors=custom)
        routes.add("GET", "/default", handler)
        assert (await routes(request("GET", "/open"))).body == b"granted:open"
        refused = await routes(request("GET", "/closed"))
        assert (refused.status, json.loads(refused.body)) == (  # type: ignore[arg-type]
            401,
            {"code": "unauthenticated", "message": "no entry"},
        )
        assert (await routes(request("GET", "/custom"))).status == 299
        assert (await routes(request("GET", "/default"))).body == b"granted:None"
        await routes(request("GET", "/nope"))  # unrouted: the guard is not consulted

    run(main())
    assert seen == ["open", "closed", "closed", None]
