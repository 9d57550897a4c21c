"""The gateway's router: host and token -> verdict, cached until the sandbox table changes.

Shared by the appliance process and its gateway workers (appliance/workers.py),
which differ only in how they read the table: the appliance through its Store,
a worker through a read-only connection of its own.
"""

from __future__ import annotations

from collections.abc import Callable

from controlplane.tokens import verify_access_token
from gateway.access import SandboxView, Verdict, decide
from gateway.proxy import Router
from gateway.routing.cache import VersionedCache
from gateway.routing.table import route
from gateway.upstream import Address


def make_router(
    *,
    domain: str,
    secret: bytes,
    api_address: Address,
    lookup: Callable[[str], SandboxView | None],
    version: Callable[[], int],
) -> Router:
    def verdict(key: tuple[str, str | None, bool]) -> Verdict:
        host, token, agent_authorises = key
        return decide(
            route(host, domain),
            lookup=lookup,
            access_token=token,
            verify=lambda sid, tok: verify_access_token(secret, sid, tok),
            api_address=api_address,
            agent_authorises=agent_authorises,
        )

    verdicts = VersionedCache(version, verdict)

    def router(host: str, token: str | None, agent_authorises: bool) -> Verdict:
        return verdicts.get((host, token, agent_authorises))

    return router
