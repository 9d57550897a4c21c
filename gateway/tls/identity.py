"""What the gateway's TLS listener presents: an SSL context and the names its certificate covers.

One frozen value, loaded from the certificate and key files, so a reload (SIGHUP)
swaps both at once: connections handshaken before keep the context and names
they were shown, new ones get the new pair.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from gateway.tls.context import server_context
from gateway.tls.names import certificate_names

__all__ = ["ServerTls", "load_server_tls"]


@dataclass(frozen=True)
class ServerTls:
    context: ssl.SSLContext
    # What the certificate is valid for (see gateway.tls.names): the Hosts a client
    # without SNI may ask for.
    names: tuple[str, ...]


def load_server_tls(cert: Path, key: Path) -> ServerTls:
    """Load the pair; raises ``ValueError`` saying what is wrong with it."""
    context = server_context(cert, key)
    try:
        names = certificate_names(cert.read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the names of certificate {cert}: {exc}") from exc
    return ServerTls(context, names)
