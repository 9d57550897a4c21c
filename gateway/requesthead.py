"""One pass over a request head: the headers the gateway acts on, and the shapes it refuses. Pure.

h11 parses the head (bytes in, events out); this then looks, once, at the
headers and the raw head bytes for what h11 lets through but a reverse proxy
must not pass on: framings an upstream could read differently from the gateway
(request smuggling), and heads past the configured sizes. Every refusal here
closes the connection, since after an ambiguous framing nobody can tell where
the next request starts.

    Content-Length and Transfer-Encoding together      400  h11 frames by TE; an upstream might use CL
    Transfer-Encoding in an HTTP/1.0 request           400  RFC 9112 section 6.1: faulty framing
    obsolete line folding                              400  h11 unfolds it silently
    a control character in the head (not HTAB)         400  h11 passes all but NUL, CR and LF
    a request line longer than max_request_line        414
    a head longer than max_head, or over max_headers   431

Refused by h11 itself, earlier (the gateway answers with h11's status and closes):
two different Content-Lengths or a malformed one (400), a Transfer-Encoding other
than `chunked` (501, as RFC 9112 asks and nginx does), NUL, CR or LF inside a
header or a space before its colon (400), an incomplete head beyond max_head (431,
or 414 while even the request line is incomplete), and, while the body is read,
bad chunk sizes or chunk framing (400).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import h11

from gateway.access import Refuse
from gateway.limits import HttpLimits

Headers = list[tuple[bytes, bytes]]

# CTLs other than HTAB (CR and LF end lines), and a line that starts with
# whitespace: obs-fold. Searched once over the raw head.
_FORBIDDEN = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\n[ \t]")
_WANTED = frozenset(
    {
        b"host",
        b"x-access-token",
        b"x-request-id",
        b"accept",
        b"content-type",
        b"content-length",
        b"transfer-encoding",
        b"upgrade",
        b"connection",
        b"cookie",
    }
)


@dataclass(slots=True)
class RequestHead:
    """The request's headers as a list, and the ones the gateway reads, found in one pass."""

    headers: Headers
    host: bytes = b""
    access_token: bytes | None = None
    request_id: bytes = b""
    accept: bytes = b""
    content_type: bytes = b""
    content_length: bytes | None = None
    transfer_encoding: bytes | None = None
    upgrade: bytes | None = None
    # Lowercase tokens of every Connection header.
    connection: set[bytes] = field(default_factory=set)
    # Every Cookie header's value (HTTP/1.1 clients send one; nothing forbids more).
    cookies: list[bytes] = field(default_factory=list)
    # Set when the request must be refused (and the connection closed) as it stands.
    refusal: Refuse | None = None

    @property
    def is_upgrade(self) -> bool:
        return b"upgrade" in self.connection and self.upgrade is not None


def read_head(req: h11.Request, raw: bytes, head_length: int, limits: HttpLimits) -> RequestHead:
    """`raw[:head_length]` are the bytes h11 parsed `req` from."""
    headers = list(req.headers)
    head = RequestHead(headers)
    for name, value in headers:
        if name not in _WANTED:
            continue
        if name == b"host":
            head.host = value
        elif name == b"x-access-token":
            head.access_token = value
        elif name == b"x-request-id":
            head.request_id = value
        elif name == b"accept":
            head.accept = value
        elif name == b"content-type":
            head.content_type = value
        elif name == b"content-length":
            head.content_length = value
        elif name == b"transfer-encoding":
            head.transfer_encoding = value
        elif name == b"upgrade":
            head.upgrade = value
        elif name == b"cookie":
            head.cookies.append(value)
        else:
            head.connection.update(token.strip().lower() for token in value.split(b","))
    head.refusal = _refusal(req, head, raw, head_length, limits)
    return head


def _refusal(req: h11.Request, head: RequestHead, raw: bytes, head_length: int, limits: HttpLimits) -> Refuse | None:
    line = len(req.method) + len(req.target) + len(b"  HTTP/1.1")
    if line > limits.max_request_line:
        return Refuse(
            414, "uri_too_long", f"request line of {line} bytes exceeds the limit of {limits.max_request_line}"
        )
    if head_length > limits.max_head:
        return Refuse(431, "headers_too_large", f"request head of {head_length} bytes exceeds {limits.max_head}")
    if len(head.headers) > limits.max_headers:
        return Refuse(
            431, "headers_too_large", f"{len(head.headers)} header fields exceed the limit of {limits.max_headers}"
        )
    if head.transfer_encoding is not None:
        if head.content_length is not None:
            return Refuse(400, "bad_request", "Content-Length and Transfer-Encoding together (ambiguous framing)")
        if req.http_version == b"1.0":
            return Refuse(400, "bad_request", "Transfer-Encoding in an HTTP/1.0 request (ambiguous framing)")
    bad = _FORBIDDEN.search(raw, 0, head_length)
    if bad is not None:
        if bad.group()[0] == ord("\n"):
            return Refuse(400, "bad_request", "obsolete line folding in the request head")
        return Refuse(400, "bad_request", f"control character {bad.group()[0]:#04x} in the request head")
    return None
