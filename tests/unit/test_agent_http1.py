"""agent.http1: the pure HTTP/1.1 parser and encoder, without sockets."""

from __future__ import annotations

import json

import pytest

from agent.http1 import ProtocolError, RequestParser, Response, encode_response, error_response


def parse_one(data: bytes, **limits: int):
    parser = RequestParser(**limits)
    parser.feed(data)
    return parser.next_request()


def test_simple_get() -> None:
    request = parse_one(b"GET /health?x=1 HTTP/1.1\r\nHost: a\r\nX-Thing:  v  \r\n\r\n")
    assert request is not None
    assert (request.method, request.path, request.query, request.version) == ("GET", "/health", "x=1", (1, 1))
    assert request.headers == [("host", "a"), ("x-thing", "v")]
    assert request.header("x-thing") == "v"
    assert request.header("missing") is None
    assert request.keep_alive
    assert request.body == b""


def test_byte_at_a_time_and_pipelined() -> None:
    data = b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\n\r\n"
    parser = RequestParser()
    requests = []
    for i in range(len(data)):
        parser.feed(data[i : i + 1])
        request = parser.next_request()
        if request is not None:
            requests.append(request)
    assert [(r.method, r.path, r.body) for r in requests] == [("POST", "/a", b"abc"), ("GET", "/b", b"")]
    assert not parser.pending


def test_need_data_and_pending() -> None:
    parser = RequestParser()
    assert parser.next_request() is None
    assert not parser.pending
    parser.feed(b"GET / HTTP/1.1\r\n")
    assert parser.next_request() is None
    assert parser.pending


def test_leading_empty_lines_are_ignored() -> None:
    parser = RequestParser()
    parser.feed(b"\r\n\r\n")
    assert parser.next_request() is None
    assert not parser.pending
    parser.feed(b"GET / HTTP/1.1\r\n\r\n")
    assert parser.next_request() is not None


@pytest.mark.parametrize(
    ("headers", "version", "keep_alive"),
    [
        (b"", b"1.1", True),
        (b"Connection: close\r\n", b"1.1", False),
        (b"Connection: Upgrade, CLOSE\r\n", b"1.1", False),
        (b"", b"1.0", False),
        (b"Connection: keep-alive\r\n", b"1.0", True),
    ],
)
def test_keep_alive(headers: bytes, version: bytes, keep_alive: bool) -> None:
    request = parse_one(b"GET / HTTP/" + version + b"\r\n" + headers + b"\r\n")
    assert request is not None
    assert request.keep_alive is keep_alive


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        (b"/", "/", ""),
        (b"/a/b?c=d&e", "/a/b", "c=d&e"),
        (b"http://example.com/health?q", "/health", "q"),
        (b"HTTPS://example.com", "/", ""),
    ],
)
def test_targets(target: bytes, path: str, query: str) -> None:
    request = parse_one(b"GET " + target + b" HTTP/1.1\r\n\r\n")
    assert request is not None
    assert (request.path, request.query) == (path, query)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /\r\n\r\n", 400),
        (b"GET  / HTTP/1.1\r\n\r\n", 400),
        (b"G(T / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.x\r\n\r\n", 400),
        (b"GET health HTTP/1.1\r\n\r\n", 400),
        (b"GET /\x7f HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nBad : x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nA: b\x00c\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n", 413),
    ],
)
def test_malformed(data: bytes, status: int) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_one(data)
    assert caught.value.status == status


def test_repeated_equal_content_length_is_accepted() -> None:
    request = parse_one(b"POST / HTTP/1.1\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nok")
    assert request is not None
    assert request.body == b"ok"


def test_head_cap_without_terminator() -> None:
    parser = RequestParser(max_head=100)
    parser.feed(b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 50)
    assert parser.next_request() is None
    parser.feed(b"a" * 50)
    with pytest.raises(ProtocolError) as caught:
        parser.next_request()
    assert caught.value.status == 431


def test_head_cap_with_terminator() -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_one(b"GET / HTTP/1.1\r\nX: " + b"a" * 200 + b"\r\n\r\n", max_head=100)
    assert caught.value.status == 431


def test_body_cap() -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_one(b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", max_body=10)
    assert caught.value.status == 413


def test_encode_bodiless_and_head() -> None:
    assert encode_response(Response(204)) == b"HTTP/1.1 204 No Content\r\n\r\n"
    response = Response(200, headers=[("X-A", "b")], body=b"hello")
    assert encode_response(response) == b"HTTP/1.1 200 OK\r\nX-A: b\r\nContent-Length: 5\r\n\r\nhello"
    assert encode_response(response, head_only=True, connection="close") == (
        b"HTTP/1.1 200 OK\r\nX-A: b\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
    )


def test_error_response_envelope() -> None:
    response = error_response(404, "not_found", "nope", headers=[("X-A", "b")])
    assert response.status == 404
    assert ("Content-Type", "application/json") in response.headers
    assert ("X-A", "b") in response.headers
    assert json.loads(response.body) == {"code": "not_found", "message": "nope"}
