"""Contexts by id, the default context of each language, one execution at a time in each.

A context's kernel starts with the context (CreateContext) or on its first
execution (a default context), and again after it died: the context then
keeps its id and execution count but not its interpreter state.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping

from agent.init import Reaper
from agent.interpreter.kernel import Kernel, KernelGone, Run
from agent.interpreter.languages import Language
from agent.users import User

MAX_CONTEXTS = 64


class TooManyContexts(Exception):
    pass


class UnknownContext(LookupError):
    pass


class Context:
    def __init__(self, language: Language, user: User, cwd: str, environ: Mapping[str, str], reaper: Reaper) -> None:
        self.id = str(uuid.uuid4())
        self.language = language
        self.user = user
        self.cwd = cwd
        self.created_ns = time.time_ns()
        self.execution_count = 0
        self.kernel: Kernel | None = None
        self._environ = environ
        self._reaper = reaper
        self._lock = asyncio.Lock()
        self.closed = False

    async def ensure_kernel(self) -> Kernel:
        """The running kernel, started (again) if there is none."""
        if self.kernel is None or not self.kernel.alive:
            self.kernel = await Kernel.start(self.language, self.user, self.cwd, self._environ, self._reaper)
            if self.closed:  # destroyed while it started
                self.kernel.kill()
                raise KernelGone("the context was destroyed")
        return self.kernel

    async def start_run(self, code: str, env: Mapping[str, str]) -> tuple[Run, int]:
        """Queue behind earlier executions, then start this one; the run and its execution count."""
        async with self._lock:
            for _ in range(2):  # a kernel that died while this waited is started again, once
                if self.closed:
                    raise KernelGone("the context was destroyed")
                kernel = await self.ensure_kernel()
                try:
                    run = await kernel.run(code, env)
                except KernelGone:
                    continue
                self.execution_count += 1
                return run, self.execution_count
            raise KernelGone(f"the {self.language.name} kernel keeps exiting")

    def close(self) -> None:
        self.closed = True
        if self.kernel is not None:
            self.kernel.kill()


class ContextTable:
    def __init__(self, max_contexts: int = MAX_CONTEXTS) -> None:
        self._contexts: dict[str, Context] = {}
        self._defaults: dict[tuple[str, str], str] = {}  # (language, user) -> context id
        self._max = max_contexts

    def add(self, context: Context) -> None:
        if len(self._contexts) >= self._max:
            raise TooManyContexts(
                f"{len(self._contexts)} contexts exist, the most a sandbox keeps: destroy one (DestroyContext) first"
            )
        self._contexts[context.id] = context

    def get(self, context_id: str) -> Context:
        context = self._contexts.get(context_id)
        if context is None:
            raise UnknownContext(f"context {context_id[:80]!r} does not exist (it was never created or was destroyed)")
        return context

    def default(self, language: str, user: str) -> Context | None:
        context_id = self._defaults.get((language, user))
        return None if context_id is None else self._contexts.get(context_id)

    def set_default(self, context: Context) -> None:
        self.add(context)
        self._defaults[(context.language.name, context.user.name)] = context.id

    def remove(self, context_id: str) -> Context:
        context = self.get(context_id)
        del self._contexts[context_id]
        for key, value in list(self._defaults.items()):
            if value == context_id:
                del self._defaults[key]
        return context

    def __len__(self) -> int:
        return len(self._contexts)
