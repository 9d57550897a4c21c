"""Verdicts remembered until the sandbox table changes. Pure (no I/O, no clock).

Deciding a request's route costs a host parse, a database read and an HMAC:
about a tenth of the gateway's time per request, for an answer that only
changes when a sandbox row does. The store counts its sandbox writes
(`Store.sandboxes_version`); a verdict computed at one count holds until the
next, so nothing is ever stale: a pause or a delete is seen by the very next
request. The cache is bounded, because its keys carry client-chosen tokens and
hosts: when full it starts over.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

MAX_ENTRIES = 4096


class VersionedCache(Generic[K, V]):
    def __init__(self, version: Callable[[], int], compute: Callable[[K], V], max_entries: int = MAX_ENTRIES) -> None:
        self._version = version
        self._compute = compute
        self._max = max_entries
        self._seen_version = version()
        self._entries: dict[K, V] = {}

    def get(self, key: K) -> V:
        current = self._version()
        if current != self._seen_version:
            self._entries.clear()
            self._seen_version = current
        try:
            return self._entries[key]
        except KeyError:
            pass
        value = self._compute(key)
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[key] = value
        return value
