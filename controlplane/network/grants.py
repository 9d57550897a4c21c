"""Which names the appliance's resolver answered with which address, and until when.

The egress proxy asks it for the names behind a destination address: a connection
to an address counts as a connection to the names the sandboxes' resolver handed it
out for (controlplane/egress.py `address_allowed(resolved_for=...)`). The table is
shared by all sandboxes on purpose: a name only ever lets a sandbox through if that
sandbox's own policy allows the name, so learning an address from a neighbour's
lookup grants nothing its policy did not, while a denied name known to live at an
address makes a bare connection there refused for everyone who denies it.

Entries live for the answer's TTL, bounded below (clients cache answers longer than
told) and above (resolver.py MIN_GRANT, MAX_GRANT). In memory only: after a restart
a sandbox resolves again, as it does when its own cache runs out.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

MAX_ADDRESSES = 65536


class AddressNames:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic, capacity: int = MAX_ADDRESSES) -> None:
        self._clock = clock
        self._capacity = capacity
        # address -> {name: expiry}; least recently written first, so the oldest go when full.
        self._entries: OrderedDict[str, dict[str, float]] = OrderedDict()

    def add(self, name: str, addresses: Iterable[str], seconds: float) -> None:
        until = self._clock() + seconds
        for address in addresses:
            names = self._entries.pop(address, {})
            names[name] = max(until, names.get(name, 0.0))
            self._entries[address] = names
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def names_for(self, address: str) -> list[str]:
        names = self._entries.get(address)
        if not names:
            return []
        now = self._clock()
        live = {name: until for name, until in names.items() if until > now}
        if live:
            self._entries[address] = live
        else:
            del self._entries[address]
        return sorted(live)

    def __len__(self) -> int:
        return len(self._entries)
