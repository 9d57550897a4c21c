"""The gateway's router: host and token -> verdict, cached until the sandbox table changes.

Shared by the appliance process and its gateway workers (appliance/workers.py),
which differ only in how they read the table: the appliance through its Store,
a worker through a read-only connection of its own. Both hand over the stored
row; `view_of` is the one place that turns it into what the gateway may know.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from controlplane.lifecycle.states import wakes_on_traffic
from controlplane.ports import normalise
from controlplane.records import SandboxRecord
from controlplane.tokens import port_token_id, verify_access_token
from gateway.access import Grant, PortPolicy, SandboxView, StreamVerdict, Verdict, decide, decide_stream
from gateway.proxy import Router
from gateway.routing.cache import VersionedCache
from gateway.routing.table import route
from gateway.upstream import Address


def view_of(rec: SandboxRecord) -> SandboxView:
    ports = {}
    for stored in rec.custom_ports:
        p = normalise(stored)
        ports[p["port"]] = PortPolicy(protocol=p["protocol"], private=p["access"] == "private")
    grants = {
        t["id"]: Grant(
            port=t["port"],
            path_prefix=t.get("path_prefix"),
            methods=frozenset(t["methods"]) if t.get("methods") else None,
            expires_at=t.get("expires_at"),
        )
        for t in rec.port_tokens
    }
    sleeping = rec.auto_pause and wakes_on_traffic(rec.state, rec.reason)
    return SandboxView(state=rec.state.value, ip=rec.ip, ports=ports, grants=grants, wakeable=sleeping)


@dataclass(frozen=True)
class Routers:
    http: Router
    # SNI (normalised) -> what to do with a TLS connection before any HTTP.
    stream: Callable[[str], StreamVerdict]


def make_router(
    *,
    domain: str,
    secret: bytes,
    api_address: Address,
    record: Callable[[str], SandboxRecord | None],
    version: Callable[[], int],
) -> Routers:
    def lookup(sandbox_id: str) -> SandboxView | None:
        rec = record(sandbox_id)
        return None if rec is None else view_of(rec)

    def verdict(key: tuple[str, str | None, bool]) -> Verdict:
        host, token, agent_authorises = key
        return decide(
            route(host, domain),
            lookup=lookup,
            access_token=token,
            verify=lambda sid, tok: verify_access_token(secret, sid, tok),
            api_address=api_address,
            agent_authorises=agent_authorises,
            port_token_id=lambda sid, tok: port_token_id(secret, sid, tok),
        )

    verdicts = VersionedCache(version, verdict)
    streams: VersionedCache[str, StreamVerdict] = VersionedCache(
        version, lambda sni: decide_stream(route(sni, domain), lookup=lookup)
    )

    def router(host: str, token: str | None, agent_authorises: bool) -> Verdict:
        return verdicts.get((host, token, agent_authorises))

    return Routers(http=router, stream=streams.get)
