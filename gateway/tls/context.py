"""``ssl.SSLContext`` factories for the gateway's TLS listener and for its clients.

Both sides offer only ALPN ``http/1.1``: the gateway splices HTTP/1.1 (and
WebSocket upgrades over it) and does not speak HTTP/2, so a client must not be
led to believe otherwise.
"""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = ["ALPN_PROTOCOLS", "client_context", "server_context"]

ALPN_PROTOCOLS = ("http/1.1",)

# Forward secrecy and AEAD only for TLS 1.2; TLS 1.3 suites are all of that kind.
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context presenting ``cert``; raises ``ValueError`` if the pair won't load."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx)
    # Client-initiated renegotiation is a cheap CPU attack and nothing here needs it.
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    try:
        ctx.load_cert_chain(certfile=cert, keyfile=key)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"cannot load TLS certificate {cert} with key {key}: {exc}") from exc
    return ctx


def client_context(ca: Path) -> ssl.SSLContext:
    """A verifying client context that trusts only the CA in ``ca``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(ctx)
    try:
        ctx.load_verify_locations(cafile=ca)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"cannot load CA certificate {ca}: {exc}") from exc
    return ctx


def _harden(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(_TLS12_CIPHERS)
    ctx.set_alpn_protocols(list(ALPN_PROTOCOLS))
