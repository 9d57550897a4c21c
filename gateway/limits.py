"""How much a client may send, how slowly, and how many connections it may hold. Pure values.

The deadlines, in the order a request meets them:

    sniff_timeout        a new connection's first byte               (GatewayLimits)
    handshake_timeout    the whole ClientHello and TLS handshake      (GatewayLimits)
    head_timeout         the whole request head, from its first byte
    body_idle_timeout    each wait for the next piece of the body
    request_timeout      the whole body: `request_timeout` seconds of waiting for the
                         client, plus one second per `body_min_rate` bytes received
    upstream_idle_timeout, tunnel_idle_timeout   the other side

The whole-body budget counts only time spent waiting for the client (an upstream
slow to read does not use it up) and grows with the bytes that arrive, so a large
upload at any honest speed passes while a client trickling a byte now and then,
each within the idle limit, is still cut (Apache's mod_reqtimeout MinRate).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class HttpLimits:
    head_timeout: float = 30.0
    keepalive_timeout: float = 75.0
    body_idle_timeout: float = 60.0
    request_timeout: float = 60.0
    body_min_rate: float = 1024.0  # bytes per second that each buy one more second
    upstream_idle_timeout: float = 600.0
    tunnel_idle_timeout: float = 3600.0
    # 414 beyond; browsers send up to 8 KiB, signed URLs are far shorter.
    max_request_line: int = 16 * 1024
    # 431 beyond: request line and headers together, and the count of header lines.
    max_head: int = 64 * 1024
    max_headers: int = 100
    # 503 beyond: requests (and WebSocket tunnels) in flight to one sandbox, per process.
    max_exchanges_per_sandbox: int = 1024


@dataclass(frozen=True, kw_only=True)
class ConnectionLimits:
    """Open client connections, counted per gateway process (each of N workers has its own
    counts: a client spread over the processes can hold up to N times these)."""

    # At this many a process stops accepting, so the kernel gives new connections to a
    # sibling process, or keeps them queued until one here ends.
    max_connections: int = 4096
    # Beyond this, a client address's new connections are closed at once.
    max_per_address: int = 512


def body_wait(limits: HttpLimits, waited: float, received: int) -> tuple[float, bool]:
    """How long the next wait for body bytes may last, and whether the whole-body budget
    (rather than the idle limit) is what ends it; given the seconds already spent waiting
    for this body and the bytes received so far."""
    remaining = limits.request_timeout + received / limits.body_min_rate - waited
    if remaining < limits.body_idle_timeout:
        return max(remaining, 0.0), True
    return limits.body_idle_timeout, False
