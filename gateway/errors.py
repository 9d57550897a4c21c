"""Error answers the gateway gives itself: JSON for API clients, a short page for browsers."""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime


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
