"""Port tokens: what a request for one may ask, and the record kept of it. Pure.

A port token opens one private port of one sandbox (controlplane/ports.py),
optionally only below a path prefix, only for some methods, and only until an
expiry. The sandbox's row lists the live ones: revoking removes the record, and
a deleted sandbox takes its tokens with it. The token string itself is minted
and checked by controlplane/tokens.py (an id and a MAC over it), so the row
keeps no secret.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from controlplane.errors import BadRequest

MAX_TOKENS_PER_SANDBOX = 100
MAX_EXPIRES_IN = 30 * 24 * 3600
_METHOD = re.compile(r"^[A-Z]{1,16}$")
# A path prefix as a client sends it in the request line: no query, no dot segments.
_PATH = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]{0,1023}$")


@dataclass(frozen=True, kw_only=True)
class TokenRequest:
    name: str | None
    expires_in: int | None
    path_prefix: str | None
    methods: list[str] | None


def parse_token_request(body: Any) -> TokenRequest:
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_body")
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or not 0 < len(name) <= 64):
        raise BadRequest("name must be a string of 1-64 characters", code="invalid_field")
    expires_in = body.get("expires_in")
    if expires_in is not None and (
        isinstance(expires_in, bool) or not isinstance(expires_in, int) or not 1 <= expires_in <= MAX_EXPIRES_IN
    ):
        raise BadRequest(f"expires_in must be a number of seconds from 1 to {MAX_EXPIRES_IN}", code="invalid_field")
    path_prefix = body.get("path_prefix")
    if path_prefix is not None and (
        not isinstance(path_prefix, str) or not _PATH.fullmatch(path_prefix) or _has_dot_segment(path_prefix)
    ):
        raise BadRequest(
            "path_prefix must be a path starting with '/', without a query or '.' and '..' segments",
            code="invalid_field",
        )
    methods = body.get("methods")
    if methods is not None:
        if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
            raise BadRequest('methods must be a non-empty list like ["GET", "HEAD"]', code="invalid_field")
        methods = sorted({m.upper() for m in methods})
        if not all(_METHOD.fullmatch(m) for m in methods):
            raise BadRequest("methods must be HTTP method names", code="invalid_field")
    return TokenRequest(name=name, expires_in=expires_in, path_prefix=path_prefix, methods=methods)


def _has_dot_segment(path: str) -> bool:
    return any(seg in (".", "..") for seg in path.split("/")) or "%2e" in path.lower()


def token_record(token_id: str, port: int, req: TokenRequest, now: float) -> dict[str, Any]:
    return {
        "id": token_id,
        "port": port,
        "name": req.name,
        "path_prefix": req.path_prefix,
        "methods": req.methods,
        "created_at": now,
        "expires_at": now + req.expires_in if req.expires_in is not None else None,
    }


def live(tokens: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """The records whose token has not expired."""
    return [t for t in tokens if t.get("expires_at") is None or t["expires_at"] > now]
