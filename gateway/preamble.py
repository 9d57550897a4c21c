"""Protocols that ask for TLS in plaintext before their ClientHello. Pure.

PostgreSQL clients (`psql "sslmode=require"`, libpq, asyncpg) do not start with a
ClientHello: they send an 8-byte SSLRequest and wait for one byte, `S` (go ahead
with TLS) or `N`; a GSSENCRequest may come first, which we decline with `N`.
Answering them lets such a client reach a port declared `tcp` through the
gateway: TLS ends here and the sandbox's server sees a plain connection, which
is how it would see a client that had not asked for TLS.
"""

from __future__ import annotations

from dataclasses import dataclass

_SSL_REQUEST = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
_GSSENC_REQUEST = b"\x00\x00\x00\x08\x04\xd2\x16\x30"
PREAMBLE_LENGTH = 8


@dataclass(frozen=True)
class Preamble:
    reply: bytes  # what to send back before reading on
    tls_follows: bool  # whether the client now starts its TLS handshake


def read_preamble(data: bytes) -> Preamble | None:
    """The preamble `data` starts with (its first 8 bytes), or None when it is not one."""
    head = data[:PREAMBLE_LENGTH]
    if head == _SSL_REQUEST:
        return Preamble(b"S", True)
    if head == _GSSENC_REQUEST:
        return Preamble(b"N", False)
    return None


def could_be_preamble(data: bytes) -> bool:
    """Whether `data` (shorter than a preamble) could still become one."""
    return _SSL_REQUEST.startswith(data) or _GSSENC_REQUEST.startswith(data)
