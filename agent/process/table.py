"""The process table (pure: the caller passes the clock).

Running processes are found by pid or tag. A process that ended stays
findable for ``Connect`` (which then answers its start and its end) for
``retention`` seconds, at most ``max_ended`` of them: a client whose stream
broke, or that started a command and went away, can still learn how it ended.
Input, signals and List only ever see running entries, so for them (and for
the SDKs' ``kill``) an ended process is "not found" at once.

Tags need not be unique; a tag finds the most recently started process.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

ENDED_RETENTION = 60.0
MAX_ENDED = 64


class Entry(Protocol):
    @property
    def pid(self) -> int: ...

    @property
    def tag(self) -> str | None: ...


E = TypeVar("E", bound=Entry)


class ProcessTable(Generic[E]):
    def __init__(self, *, retention: float = ENDED_RETENTION, max_ended: int = MAX_ENDED) -> None:
        self._retention = retention
        self._max_ended = max_ended
        self._entries: dict[int, E] = {}  # pid -> entry, oldest first
        self._ended_at: dict[int, float] = {}  # pid -> clock, for ended entries only

    def add(self, entry: E) -> None:
        # A pid is reused only after its previous owner was reaped: that one has ended.
        self._forget(entry.pid)
        self._entries[entry.pid] = entry

    def find(self, *, pid: int | None = None, tag: str | None = None, include_ended: bool = False) -> E | None:
        if pid is not None:
            candidates: Iterator[E] = iter([self._entries[pid]] if pid in self._entries else [])
        else:
            candidates = (e for e in reversed(self._entries.values()) if e.tag == tag)
        for entry in candidates:
            if include_ended or entry.pid not in self._ended_at:
                return entry
        return None

    def running(self) -> list[E]:
        return [e for pid, e in self._entries.items() if pid not in self._ended_at]

    def is_running(self, entry: E) -> bool:
        return self._entries.get(entry.pid) is entry and entry.pid not in self._ended_at

    def ended(self, entry: E, now: float) -> None:
        if self._entries.get(entry.pid) is entry:
            self._ended_at[entry.pid] = now
        self.prune(now)

    def remove(self, entry: E) -> None:
        if self._entries.get(entry.pid) is entry:
            self._forget(entry.pid)

    def prune(self, now: float) -> None:
        expired = [pid for pid, at in self._ended_at.items() if now - at >= self._retention]
        excess = len(self._ended_at) - len(expired) - self._max_ended
        if excess > 0:
            # _ended_at is in order of ending: drop the oldest first.
            expired += [pid for pid in self._ended_at if pid not in expired][:excess]
        for pid in expired:
            self._forget(pid)

    def __len__(self) -> int:
        return len(self._entries)

    def _forget(self, pid: int) -> None:
        self._entries.pop(pid, None)
        self._ended_at.pop(pid, None)
