"""Graceful drain: on shutdown, idle keep-alive connections close at once, busy ones
finish their current exchange and then close."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio


class Drain:
    def __init__(self) -> None:
        self.draining = False
        self._idle: set[trio.CancelScope] = set()
        self.active = 0
        self._quiet = trio.Event()
        self._quiet.set()

    @contextmanager
    def idle(self) -> Iterator[trio.CancelScope]:
        """Wrap a wait for the next request: shutdown cancels it."""
        scope = trio.CancelScope()
        if self.draining:
            scope.cancel()
        self._idle.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._idle.discard(scope)

    @contextmanager
    def connection(self) -> Iterator[None]:
        self.active += 1
        self._quiet = trio.Event() if self.active == 1 else self._quiet
        try:
            yield
        finally:
            self.active -= 1
            if self.active == 0:
                self._quiet.set()

    def start(self) -> None:
        self.draining = True
        for scope in list(self._idle):
            scope.cancel()

    async def wait_quiet(self) -> None:
        await self._quiet.wait()
