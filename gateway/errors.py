"""Error answers the gateway gives itself: JSON for API clients, a short page for browsers,
and Connect-shaped errors for the SDKs' RPCs to a sandbox's agent, so that an SDK
reports `unauthenticated` or `unavailable` rather than failing to parse our JSON."""

from __future__ import annotations

import html
import json
import re
from datetime import UTC, datetime

from agent.connect.envelope import FLAG_END_STREAM, encode_envelope
from agent.connect.errors import CODE_FOR_HTTP_STATUS

_CONNECT_PROCEDURE = re.compile(rb"/[A-Za-z_][\w.]*\.[A-Za-z_]\w*/[A-Za-z_]\w*")
# The gateway's 409 means "the sandbox is not running": a precondition, not a clash.
_CONNECT_CODES = {**CODE_FOR_HTTP_STATUS, 409: "failed_precondition"}


def connect_kind(method: bytes, path: bytes, content_type: bytes) -> str | None:
    """ "stream" or "unary" when the request is a Connect RPC, else None."""
    if method != b"POST" or not _CONNECT_PROCEDURE.fullmatch(path):
        return None
    ctype = content_type.split(b";", 1)[0].strip().lower()
    if ctype in (b"application/connect+proto", b"application/connect+json"):
        return "stream"
    if ctype in (b"application/proto", b"application/json"):
        return "unary"
    return None


def render_connect(status: int, message: str, *, kind: str, content_type: str) -> tuple[int, str, bytes]:
    """(HTTP status, content type, body) of a Connect error.

    Stream errors travel in-band: HTTP 200 and an end-of-stream envelope, as the
    Connect clients read them; unary errors are the HTTP status and `{code, message}`.
    """
    error = {"code": _CONNECT_CODES.get(status, "unknown"), "message": message}
    if kind == "stream":
        payload = json.dumps({"error": error}, separators=(",", ":")).encode()
        return 200, content_type, encode_envelope(payload, FLAG_END_STREAM)
    return status, "application/json", json.dumps(error, separators=(",", ":")).encode()


def wants_html(accept: str) -> bool:
    """Browsers ask for text/html first; SDKs and curl ask for JSON or anything."""
    return "text/html" in accept.lower()


def render(status: int, error: str, message: str, *, accept: str, request_id: str) -> tuple[str, bytes]:
    """Return (content type, body) for an error the gateway answers itself."""
    if wants_html(accept):
        title = html.escape(f"{status} {error.replace('_', ' ')}")
        page = (
            "<!doctype html><html><head><meta charset=utf-8>"
            f"<title>{title}</title></head><body><h1>{title}</h1>"
            f"<p>{html.escape(message)}</p><p><small>ScaleBox gateway &middot; request {html.escape(request_id)}"
            "</small></p></body></html>"
        )
        return "text/html; charset=utf-8", page.encode()
    body = {
        "success": False,
        "error": error,
        "message": message,
        "code": error,
        "request_id": request_id,
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    return "application/json", json.dumps(body, separators=(",", ":")).encode()
