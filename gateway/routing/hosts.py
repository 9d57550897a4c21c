"""Host and SNI normalisation: turn what a client sent into a canonical DNS name.

Both the TLS SNI and the HTTP `Host` header arrive as untrusted bytes; routing only
ever sees the output of `normalise_host`, so every later comparison is plain string
equality on lowercase names without a port or a trailing dot.
"""

from __future__ import annotations

import re

# RFC 1123 labels; we never route IP literals, so a purely numeric last label is fine
# to accept here and simply matches nothing later.
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_MAX_NAME = 253


class InvalidHost(ValueError):
    """The Host header or SNI is not a usable DNS name."""


def split_host_port(value: str) -> tuple[str, int | None]:
    """Split `name[:port]` (and `[v6]:port`); the port is validated, the name is not."""
    value = value.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise InvalidHost(f"unterminated IPv6 literal in host {value!r}")
        name, rest = value[1:end], value[end + 1 :]
        if not rest:
            return name, None
        if not rest.startswith(":"):
            raise InvalidHost(f"unexpected text after IPv6 literal in host {value!r}")
        return name, _parse_port(rest[1:], value)
    if value.count(":") == 1:
        name, port = value.split(":")
        return name, _parse_port(port, value)
    return value, None


def _parse_port(text: str, whole: str) -> int:
    # isascii: str.isdigit() also accepts digits int() refuses ("²") or reads ("٨٠");
    # the length bound keeps int() away from its 4300-digit ValueError.
    if not (text.isascii() and text.isdigit() and len(text) <= 5) or not 0 < int(text) < 65536:
        raise InvalidHost(f"invalid port in host {whole!r}")
    return int(text)


def normalise_host(value: str | bytes) -> str:
    """Canonical lowercase DNS name from a Host header or SNI value, port removed."""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidHost("host is not ASCII") from None
    if not value.isascii():
        # str.lower() maps some non-ASCII letters onto ASCII ones (KELVIN SIGN -> "k").
        raise InvalidHost("host is not ASCII")
    name, _port = split_host_port(value)
    name = name.lower()
    # One trailing dot is the root label; "a.." is not a name.
    name = name[:-1] if name.endswith(".") else name
    if not name:
        raise InvalidHost("empty host")
    if len(name) > _MAX_NAME:
        raise InvalidHost("host name longer than 253 characters")
    if not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise InvalidHost(f"invalid host name {name!r}")
    return name
