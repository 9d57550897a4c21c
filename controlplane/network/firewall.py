"""The appliance's firewall: its nftables tables, kept in line with the database.

    firewall = Firewall(spec=spec, sandboxes=lambda: store.sandboxes_in(LIVE))
    await firewall.install()            # on start, after reconcile: all of it from the store
    await firewall.sandboxes_changed()  # after a sandbox's row gained or lost an address
    nursery.start_soon(firewall.watch)  # puts the tables back should something remove them
    await firewall.stop()               # on a clean stop

The database is the truth: an update re-reads the sandboxes and replaces the
per-sandbox sets whole, in one transaction, rather than adding and deleting single
elements. So a lost update, an address reused by the next container, or a crash
between two writes cannot leave a wrong rule behind for longer than the next update.
Updates are serialised, and one that finds the sets already right runs no `nft` at all;
callers that queued behind an update made after their change are served by it.

`SandboxService` sees only the `NetworkPolicy` protocol: `NoFirewall` when the
firewall is off (`--no-firewall`) and in unit tests.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import trio

from appliance import log
from controlplane.lifecycle.states import LIVE
from controlplane.network import nft
from controlplane.network.nft import FirewallError
from controlplane.network.ruleset import (
    EgressSets,
    FirewallSpec,
    egress_sets,
    online_addresses,
    render,
    render_presence,
    render_removal,
    render_sandboxes,
)
from controlplane.projects import peer_pairs
from controlplane.records import SandboxRecord


@dataclass(frozen=True)
class _Sets:
    online: frozenset[str]
    egress: EgressSets
    peers: frozenset[tuple[str, str]] = frozenset()


class NetworkPolicy(Protocol):
    async def sandboxes_changed(self) -> None:
        """Bring the per-sandbox rules in line with the store, which already holds the change.

        Raises RuntimeFailure (nft.FirewallError) when the rules could not be written.
        """
        ...


class NoFirewall:
    """No rules: sandboxes reach whatever Podman's bridge lets them reach."""

    async def sandboxes_changed(self) -> None:
        return None


Applier = Callable[[str], Awaitable[None]]


class Firewall:
    def __init__(
        self,
        *,
        spec: FirewallSpec,
        sandboxes: Callable[[], Iterable[SandboxRecord]],
        apply: Applier = nft.apply,
        bridge_netfilter: Callable[[str], bool] = nft.ensure_bridge_netfilter,
        connecting: Callable[[], set[str]] = set,
    ) -> None:
        self.spec = spec
        self._sandboxes = sandboxes
        # Ids of the projects whose sandboxes may connect to each other (controlplane/projects.py).
        self._connecting = connecting
        self._apply = apply
        self._bridge_netfilter = bridge_netfilter
        self._lock = trio.Lock()
        self._requested = 0
        self._served = 0
        # The per-sandbox sets as last written; None until installed (and after stop).
        self._applied: _Sets | None = None

    @property
    def installed(self) -> bool:
        return self._applied is not None

    def _online(self) -> _Sets:
        records = list(self._sandboxes())
        online = online_addresses(records, self.spec.subnet)
        live = [(r.project_id, r.ip) for r in records if r.state in LIVE]
        peers = frozenset(peer_pairs(live, self._connecting()))
        return _Sets(online, egress_sets(records, online), peers)

    async def install(self) -> None:
        """Replace both tables (left by an earlier run, or missing) with rules for the store's sandboxes."""
        async with self._lock:
            online = self._online()
            started = time.monotonic()
            await self._apply(render(self.spec, online.online, online.peers, egress=online.egress))
            self._bridge_netfilter(self.spec.interface)
            self._applied = online
            if not nft.br_netfilter_present():
                log.event(
                    "firewall.warning", problem="no br_netfilter: sandbox-to-sandbox traffic is dropped, not refused"
                )
            log.event(
                "firewall.installed",
                table=self.spec.table,
                interface=self.spec.interface,
                subnet=self.spec.subnet,
                public_ports=list(self.spec.public_ports),
                online=len(online.online),
                proxied=len(online.egress.proxied),
                seconds=round(time.monotonic() - started, 4),
            )

    async def sandboxes_changed(self) -> None:
        if self._applied is None:
            return
        self._requested += 1
        ticket = self._requested
        async with self._lock:
            if self._served >= ticket or self._applied is None:
                # An update that read the store after our caller wrote to it has run.
                return
            serving = self._requested
            online = self._online()
            # The bridge comes and goes with its containers: switch it on again each time.
            self._bridge_netfilter(self.spec.interface)
            if online != self._applied:
                started = time.monotonic()
                try:
                    await self._apply(render_sandboxes(self.spec, online.online, online.peers, egress=online.egress))
                except FirewallError as exc:
                    # Our tables are gone or damaged (a `flush ruleset`): write them whole.
                    log.event("firewall.rewriting", table=self.spec.table, error=str(exc))
                    await self._apply(render(self.spec, online.online, online.peers, egress=online.egress))
                self._applied = online
                log.event("firewall.updated", online=len(online.online), seconds=round(time.monotonic() - started, 4))
            self._served = serving

    async def present(self) -> bool:
        """Whether both tables are there (changes nothing)."""
        try:
            # One command per run: nft 1.0.6 answers a second `list table` in the same
            # buffer with "No such file or directory" (its cache), which made the watch
            # rewrite the whole ruleset every 10 s.
            for command in render_presence(self.spec.table).splitlines():
                await self._apply(command + "\n")
        except FirewallError:
            return False
        return True

    async def watch(self, *, interval: float = 10.0) -> None:
        """Every `interval` seconds, put the tables back if something removed them: a
        `flush ruleset` (restarting Debian's nftables service does one) would otherwise
        leave sandboxes unisolated until the next start."""
        while True:
            await trio.sleep(interval)
            async with self._lock:
                if self._applied is None:
                    continue
                if await self.present():
                    continue
                online = self._online()
                try:
                    await self._apply(render(self.spec, online.online, online.peers, egress=online.egress))
                except FirewallError as exc:
                    log.event("firewall.error", table=self.spec.table, error=str(exc))
                    continue
                self._applied = online
                log.event("firewall.restored", table=self.spec.table, online=len(online.online))

    async def stop(self) -> None:
        """On a clean stop: remove the tables, unless sandboxes live on without the appliance.

        Their containers keep running while it is down, and must stay isolated meanwhile;
        the next start replaces the tables anyway. (A crash leaves them too.)
        """
        async with self._lock:
            left = sum(1 for _ in self._sandboxes())
            if left:
                log.event("firewall.kept", table=self.spec.table, sandboxes=left)
                return
            await self._apply(render_removal(self.spec.table))
            self._applied = None
            log.event("firewall.removed", table=self.spec.table)


async def remove_tables(table: str, apply: Applier = nft.apply) -> None:
    """Delete an appliance's tables if present (the firewall was switched off since they were made)."""
    await apply(render_removal(table))
