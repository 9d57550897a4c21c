"""Where a request carries its token for a private port, and taking it off again. Pure.

A token may come three ways, in this order of precedence:

    X-Access-Token: <token>           programs
    ?token=<token>                    a link a person opens; the gateway answers a GET
                                      with a redirect to the same URL without it, and a
                                      cookie, so the token leaves the address bar
    Cookie: scalebox_port_token=...   a browser after that, iframes and WebSockets included

The cookie is host-only (no Domain attribute): set on `<port>-<id>.<D>`, it goes
back to that host alone. It is HttpOnly, and over HTTPS `SameSite=None; Secure` so
that a page embedding the port in an iframe still sends it. None of the three
reaches the sandbox's service: `without_query_token` and `without_cookie` take
them off a request before it is forwarded.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

COOKIE_NAME = b"scalebox_port_token"
QUERY_NAME = b"token"


@dataclass(frozen=True)
class Credential:
    token: bytes
    source: str  # "header", "query" or "cookie"


def find_credential(target: bytes, header: bytes | None, cookies: list[bytes]) -> Credential | None:
    if header is not None:
        return Credential(header, "header")
    from_query = query_token(target)
    if from_query is not None:
        return Credential(from_query, "query")
    from_cookie = cookie_token(cookies)
    if from_cookie is not None:
        return Credential(from_cookie, "cookie")
    return None


def _query_params(target: bytes) -> tuple[bytes, list[bytes]]:
    path, _, query = target.partition(b"?")
    return path, query.split(b"&") if query else []


def query_token(target: bytes) -> bytes | None:
    if b"token=" not in target:  # the common case, without splitting anything
        return None
    for param in _query_params(target)[1]:
        name, eq, value = param.partition(b"=")
        if eq and name == QUERY_NAME:
            return unquote_to_bytes(value)
    return None


def without_query_token(target: bytes) -> bytes:
    path, params = _query_params(target)
    kept = [p for p in params if p.partition(b"=")[0] != QUERY_NAME]
    return path + (b"?" + b"&".join(kept) if kept else b"")


def _cookie_pairs(value: bytes) -> list[bytes]:
    return [pair.strip() for pair in value.split(b";") if pair.strip()]


def cookie_token(cookies: list[bytes]) -> bytes | None:
    for value in cookies:
        if COOKIE_NAME not in value:
            continue
        for pair in _cookie_pairs(value):
            name, eq, token = pair.partition(b"=")
            if eq and name.strip() == COOKIE_NAME:
                return token.strip().strip(b'"')
    return None


def without_cookie(value: bytes) -> bytes:
    """A Cookie header's value without ours (b"" when nothing else was in it)."""
    if COOKIE_NAME not in value:
        return value
    return b"; ".join(p for p in _cookie_pairs(value) if p.partition(b"=")[0].strip() != COOKIE_NAME)


def set_cookie(token: bytes, *, secure: bool, max_age: int | None) -> bytes:
    attributes = [COOKIE_NAME + b"=" + token, b"Path=/", b"HttpOnly"]
    attributes += [b"Secure", b"SameSite=None"] if secure else [b"SameSite=Lax"]
    if max_age is not None:
        attributes.append(b"Max-Age=%d" % max(max_age, 0))
    return b"; ".join(attributes)
