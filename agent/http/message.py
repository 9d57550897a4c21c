"""Requests and responses as handlers see them, and the one HTTP error type.

    HttpError(status, code, message)    answer ``status`` with ``{"code", "message"}``
        raised by handlers, by ``Request.read`` (413) and by body reads
        (400 malformed or truncated body, 408 body stopped arriving)

A Request's body is not in memory: ``async for chunk in request.body()``
pulls it from the connection as the handler consumes it, so a slow consumer
slows the client down (TCP backpressure) instead of growing a buffer.

The target is parsed here, without touching a socket: the path is
percent-decoded as UTF-8 with ``surrogateescape``, so any byte a file name
may hold survives the round trip to ``os`` calls.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable
from typing import Callable, Union
from urllib.parse import parse_qs, unquote_to_bytes

DEFAULT_READ_LIMIT = 1024 * 1024

REASONS = {
    100: "Continue",
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    499: "Client Closed Request",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
    507: "Insufficient Storage",
}

Body = Union[bytes, AsyncIterator[bytes]]
# Pulls the next piece of the request body from the connection; None at its end.
BodyReceiver = Callable[[], Awaitable[Union[bytes, None]]]

_ABSOLUTE = re.compile(r"https?://[^/?#]*", re.IGNORECASE)
_RAW_BYTE = re.compile(r"[^\x00-\x7f]")


class HttpError(Exception):
    """Answer ``status`` with the agent's JSON error body."""

    def __init__(self, status: int, code: str, message: str, *, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or []


class Request:
    """One request: head parsed, body still on the wire.

    ``headers`` keeps every header in order, names lower-cased; ``header()``
    gives the first value of one. ``auth`` is what the routes' guard decided
    (see ``agent.auth.Grant``). ``disconnected`` is set when the client went
    away while the request was being served.
    """

    __slots__ = (
        "_body_started",
        "_receive",
        "auth",
        "client",
        "content_length",
        "default_limit",
        "disconnected",
        "headers",
        "method",
        "path",
        "query",
        "raw_query",
        "target",
        "version",
    )

    def __init__(
        self,
        *,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        version: str = "1.1",
        receive: BodyReceiver | None = None,
        default_limit: int = DEFAULT_READ_LIMIT,
        client: object = None,
    ) -> None:
        self.method = method
        self.target = target
        self.path, self.raw_query = parse_target(method, target)
        self.query = parse_query(self.raw_query)
        self.headers = headers
        self.version = version
        self.content_length = _content_length(headers)
        self.default_limit = default_limit
        self.client = client
        self.auth: object = None
        self.disconnected = asyncio.Event()
        self._receive = receive
        self._body_started = False

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def query_value(self, name: str) -> str | None:
        """The first value of query parameter ``name``, or None."""
        values = self.query.get(name)
        return values[0] if values else None

    async def body(self) -> AsyncIterator[bytes]:
        """The body as it arrives. It can be iterated once."""
        if self._body_started:
            raise RuntimeError("the request body was already read")
        self._body_started = True
        if self._receive is None:
            return
        while True:
            chunk = await self._receive()
            if chunk is None:
                return
            if chunk:
                yield chunk

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body, or HttpError 413 once it passes ``limit`` bytes (nothing more is read)."""
        if limit is None:
            limit = self.default_limit
        if self.content_length is not None and self.content_length > limit:
            raise _too_large(limit)
        data = bytearray()
        body = self.body()
        try:
            async for chunk in body:
                if len(data) + len(chunk) > limit:
                    raise _too_large(limit)
                data += chunk
        finally:
            await body.aclose()  # type: ignore[attr-defined]
        return bytes(data)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target[:200]!r}>"


class Response:
    """``body`` is bytes (sent with Content-Length) or an async iterator of bytes.

    An iterator is streamed chunk by chunk as it yields, with chunked encoding
    unless ``headers`` carry a Content-Length.
    """

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, *, headers: list[tuple[str, str]] | None = None, body: Body = b"") -> None:
        self.status = status
        self.headers = headers if headers is not None else []
        self.body = body


def error_response(status: int, code: str, message: str, *, headers: list[tuple[str, str]] | None = None) -> Response:
    """The agent's error envelope: ``{"code": ..., "message": ...}`` as JSON."""
    return json_response(status, {"code": code, "message": message}, headers=headers)


def json_response(status: int, value: object, *, headers: list[tuple[str, str]] | None = None) -> Response:
    body = json.dumps(value, separators=(",", ":")).encode()
    return Response(status, headers=[("Content-Type", "application/json"), *(headers or [])], body=body)


def parse_target(method: str, target: str) -> tuple[str, str]:
    """Split a request target into its percent-decoded path and raw query string."""
    if target.startswith("/"):
        origin = target
    elif target == "*" and method == "OPTIONS":
        return "*", ""
    else:
        absolute = _ABSOLUTE.match(target)
        if absolute is None:
            raise HttpError(400, "bad_request", "malformed request target")
        origin = target[absolute.end() :] or "/"
        if not origin.startswith(("/", "?")):
            raise HttpError(400, "bad_request", "malformed request target")
    raw_path, _, query = origin.partition("?")
    query = query.partition("#")[0]
    raw_path = raw_path.partition("#")[0] or "/"
    path = decode_component(raw_path)
    if "\x00" in path:
        raise HttpError(400, "bad_request", "the path holds a NUL byte")
    return path, query


def decode_component(text: str) -> str:
    """Percent-decode ``text`` as UTF-8, keeping undecodable bytes as surrogates (like os.fsdecode)."""
    return unquote_to_bytes(text.encode("latin-1")).decode("utf-8", "surrogateescape")


def parse_query(query: str) -> dict[str, list[str]]:
    if not query:
        return {}
    if not query.isascii():
        # Raw bytes that should have been percent-encoded: encode them, so
        # they decode as UTF-8 like the encoded ones (the target is latin-1 text).
        query = _RAW_BYTE.sub(lambda m: f"%{ord(m.group()):02X}", query)
    return parse_qs(query, keep_blank_values=True, encoding="utf-8", errors="surrogateescape")


def _content_length(headers: list[tuple[str, str]]) -> int | None:
    for name, value in headers:
        if name == "content-length":
            # The HTTP parser has already rejected malformed or conflicting values.
            return int(value.split(",")[0].strip())
    return None


def _too_large(limit: int) -> HttpError:
    return HttpError(413, "payload_too_large", f"request body is larger than {limit} bytes")
