"""Which sandbox a packet from the bridge came from, and its egress policy.

The resolver and the egress proxy see only a source address; this maps it to the
live sandbox holding it, from the store, rebuilt only when the sandbox table has
changed (the store's version), so a query or a connection costs a dict lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from controlplane.egress import EgressPolicy, policy_of
from controlplane.lifecycle.states import LIVE
from controlplane.records import SandboxRecord


class Directory:
    def __init__(self, *, sandboxes: Callable[[], Iterable[SandboxRecord]], version: Callable[[], int]) -> None:
        self._sandboxes = sandboxes
        self._version = version
        self._seen: int | None = None
        self._by_address: dict[str, tuple[str, EgressPolicy]] = {}

    def lookup(self, address: str) -> tuple[str, EgressPolicy] | None:
        """(sandbox id, its policy) for a live sandbox's address; None for anything else."""
        version = self._version()
        if version != self._seen:
            self._by_address = {
                rec.ip: (rec.id, policy_of(rec.allow_internet_access, rec.egress))
                for rec in self._sandboxes()
                if rec.ip and rec.state in LIVE
            }
            self._seen = version
        return self._by_address.get(address)
