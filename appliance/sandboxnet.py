"""The appliance's own services on the sandboxes' bridge, at its gateway address.

    resolver      :53         every sandbox's only name server (always on: containers
                              are given it in /etc/resolv.conf)
    egress proxy  :proxy_port TCP of sandboxes with egress lists, diverted to it by the
                              firewall (only with the firewall on)

Both find the sandbox behind a source address in one Directory over the store, and
share one table of which names the resolver answered with which address.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import trio

from appliance import log
from controlplane.network.directory import Directory
from controlplane.network.egressproxy import EgressProxy
from controlplane.network.grants import AddressNames
from controlplane.network.resolver import Resolver, upstream_from_resolv_conf
from controlplane.records import SandboxRecord


class SandboxNet:
    def __init__(
        self,
        *,
        gateway: str,
        sandboxes: Callable[[], Iterable[SandboxRecord]],
        version: Callable[[], int],
        upstream: tuple[str, int] | None,
        proxy_port: int | None,
        dns_port: int = 53,
    ) -> None:
        self.directory = Directory(sandboxes=sandboxes, version=version)
        self.names = AddressNames()
        upstream = upstream or upstream_from_resolv_conf()
        if upstream is None:
            log.event("resolver.warning", problem="no upstream name server in /etc/resolv.conf: every lookup fails")
        self.resolver = Resolver(
            address=gateway, port=dns_port, upstream=upstream, lookup=self.directory.lookup, allow=self._allow
        )
        self.proxy = (
            None
            if proxy_port is None
            else EgressProxy(
                address=gateway,
                port=proxy_port,
                lookup=self.directory.lookup,
                names_for=lambda _sandbox, address: self.names.names_for(address),
            )
        )
        self.gateway = gateway

    async def _allow(self, sandbox_id: str, name: str, addresses: list[str], seconds: int) -> None:
        # Before the answer leaves: the connection that follows it must find the names.
        self.names.add(name, addresses, seconds)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind both (OSError when an address is taken), then serve until cancelled."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.resolver.run)
            if self.proxy is not None:
                await nursery.start(self.proxy.run)
            log.event(
                "sandboxnet.ready",
                resolver=f"{self.gateway}:{self.resolver.port}",
                upstream=None if self.resolver.upstream is None else ":".join(map(str, self.resolver.upstream)),
                egress_proxy=None if self.proxy is None else f"{self.gateway}:{self.proxy.port}",
            )
            task_status.started()
