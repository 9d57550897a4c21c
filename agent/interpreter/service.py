"""The sandboxagent.ExecutionService and ContextService handlers.

Execute's time limit: the client's Connect-Timeout-Ms when it sends one; the
execution's own ``SCALEBOX_EXECUTION_TIMEOUT`` env var (seconds, 0 for none;
taken out of the environment the code sees); otherwise DEFAULT_TIMEOUT, the
SDKs' documented default. The smallest given applies. (The official Python
SDK sends neither its ``timeout`` nor its ``request_timeout`` on this call,
and reads the stream without a timeout: without a limit here a runaway
execution would hold its client forever.) When the limit passes, the code is
interrupted, the context keeps its state, and the call ends with
``deadline_exceeded`` saying so: the SDKs turn a message naming the
execution and the deadline into their "Execution timed out" error. A client
that leaves mid-execution interrupts it the same way.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TypeVar

from agent import users
from agent.auth import DEFAULT_USER
from agent.connect.context import RpcContext, parse_timeout
from agent.connect.errors import ConnectError
from agent.init import Reaper
from agent.interpreter.contexts import Context, ContextTable, TooManyContexts, UnknownContext
from agent.interpreter.kernel import Exited, KernelGone, KernelStartError
from agent.interpreter.kernelwire import Done, ErrorEvent, Output, ResultEvent
from agent.interpreter.languages import Language, UnknownLanguage, resolve
from agent.interpreter.results import error_message, json_fields_break, output_message, result_message
from agent.process.spawn import SpawnError, check_cwd, resolve_cwd
from agent.proto import (
    Context as ContextMessage,
)
from agent.proto import (
    CreateContextRequest,
    DestroyContextRequest,
    DestroyContextResponse,
    ExecuteRequest,
    ExecuteResponse,
    Timestamp,
)
from agent.users import User

T = TypeVar("T")

DEFAULT_TIMEOUT = 300.0
TIMEOUT_ENV = "SCALEBOX_EXECUTION_TIMEOUT"


class _DeadlinePassed(Exception):
    pass


class InterpreterService:
    def __init__(self, reaper: Reaper, environ: Mapping[str, str] | None = None) -> None:
        self._reaper = reaper
        self._environ = os.environ if environ is None else environ
        self.contexts = ContextTable()

    # --- ContextService ------------------------------------------------------------

    async def create_context(self, request: CreateContextRequest, ctx: RpcContext) -> ContextMessage:
        language = _language(request.language)
        context = self._new_context(language, ctx.user, request.cwd)
        _guard(self.contexts.add, context)
        try:
            await context.ensure_kernel()
        except KernelStartError as exc:
            self.contexts.remove(context.id)
            raise ConnectError(exc.code, exc.message) from None
        except KernelGone as exc:
            raise ConnectError("aborted", str(exc)) from None
        return _context_message(context)

    async def destroy_context(self, request: DestroyContextRequest, ctx: RpcContext) -> DestroyContextResponse:
        try:
            context = self.contexts.remove(request.context_id)
        except UnknownContext as exc:
            raise ConnectError("not_found", str(exc)) from None
        context.close()
        return DestroyContextResponse(success=True)

    # --- ExecutionService ----------------------------------------------------------

    async def execute(self, request: ExecuteRequest, ctx: RpcContext) -> AsyncIterator[ExecuteResponse]:
        env = _validated_env(request.env_vars)
        timeout = _time_limit(parse_timeout(ctx.headers.get("connect-timeout-ms")), env.pop(TIMEOUT_ENV, None))
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        context = self._context_for(request, ctx)
        json_in_extra = json_fields_break(ctx.headers.get("user-agent"))
        try:
            run, count = await _within(deadline, context.start_run(request.code, env))
        except _DeadlinePassed:
            raise _timed_out(timeout, started=False) from None
        except KernelStartError as exc:
            raise ConnectError(exc.code, exc.message) from None
        except KernelGone as exc:
            raise ConnectError("aborted", str(exc)) from None
        try:
            while True:
                try:
                    event = await _within(deadline, run.next())
                except _DeadlinePassed:
                    raise _timed_out(timeout, started=True) from None
                if event is None or isinstance(event, Done):
                    return
                if isinstance(event, Output):
                    yield output_message(event.stream, event.text)
                elif isinstance(event, ResultEvent):
                    yield result_message(
                        event.data,
                        main=event.main,
                        execution_count=count,
                        started_ns=run.started_ns,
                        finished_ns=time.time_ns(),
                        json_in_extra=json_in_extra,
                    )
                elif isinstance(event, ErrorEvent):
                    yield error_message(event.name, event.value, event.traceback)
                elif isinstance(event, Exited):
                    yield _exited(context, event)
                    return
        finally:
            if not run.finished:
                run.abandon()  # the deadline passed or the client left: stop the code

    # --- helpers ---------------------------------------------------------------------

    def _new_context(self, language: Language, user: User, cwd: str) -> Context:
        path, asked = resolve_cwd(cwd, _default_cwd(user))
        if not asked and not os.path.isdir(path):
            path = "/"  # a user without a home still gets a context
        try:
            check_cwd(path, user)
        except SpawnError as exc:
            raise ConnectError(exc.code, exc.message) from None
        return Context(language, user, path, self._environ, self._reaper)

    def _context_for(self, request: ExecuteRequest, ctx: RpcContext) -> Context:
        if request.context_id:
            try:
                context = self.contexts.get(request.context_id)
            except UnknownContext as exc:
                raise ConnectError("not_found", str(exc)) from None
            if request.language and _language(request.language).name != context.language.name:
                raise ConnectError(
                    "invalid_argument",
                    f"context {context.id} runs {context.language.name}, not {request.language[:40]!r}: "
                    "send a context or a language, not both",
                )
            return context
        language = _language(request.language)
        user = ctx.user
        context = self.contexts.default(language.name, user.name)
        if context is None:
            context = self._new_context(language, user, "")
            _guard(self.contexts.set_default, context)
        return context


async def _within(deadline: float | None, awaitable: Awaitable[T]) -> T:
    if deadline is None:
        return await awaitable
    remaining = deadline - asyncio.get_running_loop().time()
    try:
        return await asyncio.wait_for(awaitable, max(remaining, 0))
    except asyncio.TimeoutError:
        raise _DeadlinePassed() from None


def _time_limit(header: float | None, env_value: str | None) -> float | None:
    """The execution's time limit in seconds, or None for none (module docstring)."""
    limits = [] if header is None else [header]
    if env_value is not None:
        try:
            seconds = float(env_value)
        except ValueError:
            seconds = -1.0
        if not (0 <= seconds < float("inf")):
            raise ConnectError(
                "invalid_argument", f"{TIMEOUT_ENV} {env_value[:40]!r} is not a number of seconds (0 for no limit)"
            )
        if seconds > 0:
            limits.append(seconds)
        elif header is None:
            return None
    elif header is None:
        return DEFAULT_TIMEOUT
    return min(limits) if limits else None


def _timed_out(timeout: float | None, *, started: bool) -> ConnectError:
    if started:
        return ConnectError(
            "deadline_exceeded",
            f"execution deadline exceeded after {timeout:g} s: the code was interrupted; the context keeps its state",
        )
    return ConnectError(
        "deadline_exceeded",
        f"execution deadline exceeded after {timeout:g} s "
        "while the context was busy with earlier executions; this code did not run",
    )


def _exited(context: Context, event: Exited) -> ExecuteResponse:
    name = context.language.name
    if context.closed:
        value = "the context was destroyed during the execution"
    elif event.killed:
        value = (
            f"the {name} interpreter did not stop when interrupted and was killed; "
            "the context starts a fresh one on its next execution, without the previous state"
        )
    else:
        value = (
            f"the {name} interpreter exited with status {event.exit_code}; "
            "the context starts a fresh one on its next execution, without the previous state"
        )
    return error_message("InterpreterExited", value, "")


def _default_cwd(user: User) -> str:
    """The sandbox user's home (/home/user), whoever runs the context, as the SDKs document.

    The official SDKs send ``Authorization: Bearer root`` on these calls, so
    contexts run as root; their files still land where the user's do.
    """
    try:
        return users.lookup(DEFAULT_USER).home
    except users.UnknownUser:
        return user.home


def _language(name: str) -> Language:
    try:
        return resolve(name)
    except UnknownLanguage as exc:
        raise ConnectError("invalid_argument", str(exc)) from None


def _guard(add: Callable[[Context], None], context: Context) -> None:
    try:
        add(context)
    except TooManyContexts as exc:
        raise ConnectError("resource_exhausted", str(exc)) from None


def _validated_env(env: Mapping[str, str]) -> dict[str, str]:
    for name, value in env.items():
        if not name or "=" in name or "\0" in name:
            raise ConnectError(
                "invalid_argument", f"env var name {name[:40]!r} is not valid: no '=', no NUL, not empty"
            )
        if "\0" in value:
            raise ConnectError("invalid_argument", f"env var {name[:40]!r} has a NUL byte in its value")
    return dict(env)


def _context_message(context: Context) -> ContextMessage:
    return ContextMessage(
        id=context.id,
        language=context.language.name,
        cwd=context.cwd,
        created_at=Timestamp.from_ns(context.created_ns),
        env_vars={},
    )
