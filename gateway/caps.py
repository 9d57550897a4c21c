"""Counting what clients hold open, per key, against a cap. Pure bookkeeping (no I/O).

The gateway counts client connections per client address and upstream exchanges
per sandbox. Counts live in one gateway process: the workers do not share them.
"""

from __future__ import annotations

import ipaddress
from typing import Generic, TypeVar

K = TypeVar("K")


class Counts(Generic[K]):
    """How many of something each key holds; `take` refuses past `limit`."""

    __slots__ = ("_held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[K, int] = {}

    def take(self, key: K) -> bool:
        held = self._held.get(key, 0)
        if held >= self.limit:
            return False
        self._held[key] = held + 1
        return True

    def give_back(self, key: K) -> None:
        held = self._held[key] - 1
        if held:
            self._held[key] = held
        else:
            del self._held[key]

    def held(self, key: K) -> int:
        return self._held.get(key, 0)


def address_key(host: str) -> str:
    """The client a connection is counted against: its IPv4 address, or its IPv6 /64.

    One IPv6 host is routinely given a whole /64, so counting single v6 addresses
    would not cap anyone; an IPv4-mapped address counts as the IPv4 one.
    """
    if ":" not in host:
        return host
    try:
        address = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))
