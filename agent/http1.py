"""HTTP/1.1 wire format: bytes in, requests out; responses out as bytes.

Nothing here touches a socket. The server feeds whatever arrived into a
RequestParser and asks it for the next request. The answer is one of three:

    a Request          complete head and body; call again for a pipelined one
    None               need more data: feed more bytes, then ask again
    ProtocolError      the request cannot be served; send ``error_response()``
                       of it and close the connection (the parser is spent)

ProtocolError carries the status to answer with:

    400 bad_request             malformed request line, header or framing
    408 request_timeout         (raised by the server when a deadline passes)
    413 payload_too_large       Content-Length above the body cap
    431 headers_too_large       request head above the header cap
    501 not_implemented         a Transfer-Encoding (chunked bodies come later)
    505 version_not_supported   not HTTP/1.x

Bodies are framed by Content-Length only and held in memory, capped; the
file and process routes will need streaming bodies and will grow this.
"""

from __future__ import annotations

import json
import re

MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_TARGET = re.compile(r"[\x21-\x7e]+\Z")
_BAD_VALUE_CHAR = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_VERSION = re.compile(r"HTTP/([0-9])\.([0-9])\Z")
_ABSOLUTE = re.compile(r"https?://[^/?#]*", re.IGNORECASE)

REASONS = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Payload Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


class ProtocolError(Exception):
    """The peer broke HTTP/1.1 (or a limit); answer ``status`` and close."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class Request:
    """One request. Header names are lower-cased; values keep their order."""

    __slots__ = ("body", "headers", "keep_alive", "method", "path", "query", "target", "version")

    def __init__(
        self,
        *,
        method: str,
        target: str,
        path: str,
        query: str,
        version: tuple[int, int],
        headers: list[tuple[str, str]],
        keep_alive: bool,
        body: bytes = b"",
    ) -> None:
        self.method = method
        self.target = target
        self.path = path
        self.query = query
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.body = body

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target!r}>"


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, *, headers: list[tuple[str, str]] | None = None, body: bytes = b"") -> None:
        self.status = status
        self.headers = headers if headers is not None else []
        self.body = body


def error_response(status: int, code: str, message: str, *, headers: list[tuple[str, str]] | None = None) -> Response:
    """The agent's error envelope: ``{"code": ..., "message": ...}`` as JSON."""
    body = json.dumps({"code": code, "message": message}).encode()
    return Response(status, headers=[("Content-Type", "application/json"), *(headers or [])], body=body)


def encode_response(response: Response, *, head_only: bool = False, connection: str | None = None) -> bytes:
    """Serialise ``response``; ``connection`` is the Connection header to send, if any.

    Content-Length is always computed here (also for HEAD, from the body that
    is then left out), except for statuses that never carry a body.
    """
    status = response.status
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, '')}"]
    lines.extend(f"{name}: {value}" for name, value in response.headers)
    bodiless = status in (204, 304) or status < 200
    if not bodiless:
        lines.append(f"Content-Length: {len(response.body)}")
    if connection is not None:
        lines.append(f"Connection: {connection}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if bodiless or head_only:
        return head
    return head + response.body


class RequestParser:
    """Incremental request parser for one connection (see the module docstring)."""

    def __init__(self, *, max_head: int = MAX_HEAD, max_body: int = MAX_BODY) -> None:
        self._max_head = max_head
        self._max_body = max_body
        self._buffer = bytearray()
        self._scanned = 0  # bytes of _buffer already searched for the end of the head
        self._waiting: tuple[Request, int] | None = None  # parsed head awaiting its body

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def pending(self) -> bool:
        """True when part of a request has arrived but not all of it."""
        return bool(self._buffer) or self._waiting is not None

    def next_request(self) -> Request | None:
        if self._waiting is None:
            head = self._take_head()
            if head is None:
                return None
            self._waiting = _parse_head(head, self._max_body)
        request, length = self._waiting
        if len(self._buffer) < length:
            return None
        request.body = bytes(self._buffer[:length])
        del self._buffer[:length]
        self._waiting = None
        return request

    def _take_head(self) -> bytes | None:
        if self._scanned == 0:
            # RFC 9112 2.2: ignore empty lines before a request line.
            while self._buffer[:2] == b"\r\n":
                del self._buffer[:2]
        end = self._buffer.find(b"\r\n\r\n", max(0, self._scanned - 3))
        if end < 0:
            if len(self._buffer) > self._max_head:
                raise _head_too_large(self._max_head)
            self._scanned = len(self._buffer)
            return None
        if end + 4 > self._max_head:
            raise _head_too_large(self._max_head)
        head = bytes(self._buffer[:end])
        del self._buffer[: end + 4]
        self._scanned = 0
        return head


def _head_too_large(limit: int) -> ProtocolError:
    return ProtocolError(431, "headers_too_large", f"request head is larger than {limit} bytes")


def _bad(message: str) -> ProtocolError:
    return ProtocolError(400, "bad_request", message)


def _parse_head(head: bytes, max_body: int) -> tuple[Request, int]:
    """Parse a request head (without its final blank line); return it and its body length."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise _bad("malformed request line")
    method, target, version_text = parts
    if not _TOKEN.match(method):
        raise _bad("malformed method")
    version_match = _VERSION.match(version_text)
    if version_match is None:
        raise _bad("malformed HTTP version")
    version = (int(version_match.group(1)), int(version_match.group(2)))
    if version[0] != 1:
        raise ProtocolError(505, "version_not_supported", "only HTTP/1.x is served here")
    path, query = _split_target(method, target)
    headers = [_parse_header_line(line) for line in lines[1:]]
    length = _body_length(headers, version, max_body)
    request = Request(
        method=method,
        target=target,
        path=path,
        query=query,
        version=version,
        headers=headers,
        keep_alive=_keep_alive(headers, version),
    )
    return request, length


def _split_target(method: str, target: str) -> tuple[str, str]:
    if not _TARGET.match(target):
        raise _bad("malformed request target")
    if target.startswith("/"):
        origin = target
    elif target == "*" and method == "OPTIONS":
        return "*", ""
    else:
        absolute = _ABSOLUTE.match(target)
        if absolute is None:
            raise _bad("malformed request target")
        origin = target[absolute.end() :] or "/"
        if not origin.startswith(("/", "?")):
            raise _bad("malformed request target")
    path, _, query = origin.partition("?")
    path = path.partition("#")[0]
    return path or "/", query


def _parse_header_line(line: str) -> tuple[str, str]:
    if line[:1] in (" ", "\t"):
        raise _bad("obsolete header line folding")
    name, colon, value = line.partition(":")
    if not colon or not _TOKEN.match(name):
        raise _bad("malformed header line")
    value = value.strip(" \t")
    if _BAD_VALUE_CHAR.search(value):
        raise _bad("control character in a header value")
    return name.lower(), value


def _body_length(headers: list[tuple[str, str]], version: tuple[int, int], max_body: int) -> int:
    lengths = set()
    has_transfer_encoding = False
    for name, value in headers:
        if name == "content-length":
            lengths.update(item.strip() for item in value.split(","))
        elif name == "transfer-encoding":
            has_transfer_encoding = True
    if has_transfer_encoding:
        # A request with both framings is how requests are smuggled past proxies.
        if lengths or version < (1, 1):
            raise _bad("Transfer-Encoding with Content-Length or on HTTP/1.0")
        raise ProtocolError(501, "not_implemented", "Transfer-Encoding is not supported yet")
    if not lengths:
        return 0
    if len(lengths) != 1:
        raise _bad("conflicting Content-Length values")
    text = lengths.pop()
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise _bad("malformed Content-Length")
    length = int(text)
    if length > max_body:
        raise ProtocolError(413, "payload_too_large", f"request body is larger than {max_body} bytes")
    return length


def _keep_alive(headers: list[tuple[str, str]], version: tuple[int, int]) -> bool:
    options = set()
    for name, value in headers:
        if name == "connection":
            options.update(item.strip().lower() for item in value.split(","))
    if "close" in options:
        return False
    return version >= (1, 1) or "keep-alive" in options
