"""The ``sandboxagent.Process`` handlers: requests in, process table and streams out.

Errors the SDKs act on: an unknown pid or tag is ``not_found`` with "not
found" in the message (``commands.kill`` then returns False); a cwd that does
not exist is ``invalid_argument``.

A process stream (Start, Connect) is ``start{pid}``, then the data events and
the end, with a keepalive after every ``keepalive_interval`` idle seconds. It
ends early when the client goes away (``ctx.closed``) or its deadline passes;
the process keeps running either way.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Mapping

from agent import log
from agent.connect import ConnectError, RpcContext, keepalive_interval
from agent.init import Reaper
from agent.process.events import Data, End, Event
from agent.process.hub import Subscriber
from agent.process.running import InputClosed, Process
from agent.process.spawn import Request, SpawnError, spawn
from agent.process.table import ENDED_RETENTION, ProcessTable
from agent.proto import (
    ConnectRequest,
    ConnectResponse,
    ListRequest,
    ListResponse,
    ProcessConfig,
    ProcessEvent,
    ProcessInfo,
    ProcessInput,
    ProcessSelector,
    SendInputRequest,
    SendInputResponse,
    SendSignalRequest,
    SendSignalResponse,
    StartRequest,
    StartResponse,
    StreamInputRequest,
    StreamInputResponse,
    UpdateRequest,
    UpdateResponse,
)

DEFAULT_PTY_SIZE = (24, 80)  # rows, cols: a terminal's traditional size, for a PTY asked without one


class ProcessService:
    def __init__(
        self, reaper: Reaper, *, environ: Mapping[str, str] | None = None, ended_retention: float = ENDED_RETENTION
    ) -> None:
        self._reaper = reaper
        self._environ = os.environ if environ is None else environ
        self._table: ProcessTable[Process] = ProcessTable(retention=ended_retention)

    # Streams

    async def start(self, request: StartRequest, ctx: RpcContext) -> AsyncIterator[StartResponse]:
        proc = self._spawn(request, ctx)
        follower = _Follower(proc)  # before any await: nothing it prints is missed
        async for event in follower.events(ctx):
            yield StartResponse(event=event)

    async def connect(self, request: ConnectRequest, ctx: RpcContext) -> AsyncIterator[ConnectResponse]:
        proc = self._find(request.process, include_ended=True)
        follower = _Follower(proc)
        async for event in follower.events(ctx):
            yield ConnectResponse(event=event)

    # Unary

    async def list(self, request: ListRequest, ctx: RpcContext) -> ListResponse:
        self._prune()
        return ListResponse(
            processes=[ProcessInfo(config=p.config, pid=p.pid, tag=p.tag) for p in self._table.running()]
        )

    async def send_input(self, request: SendInputRequest, ctx: RpcContext) -> SendInputResponse:
        await self._write(self._find(request.process), request.input)
        return SendInputResponse()

    async def stream_input(self, requests: AsyncIterator[StreamInputRequest], ctx: RpcContext) -> StreamInputResponse:
        proc: Process | None = None
        async for request in requests:
            kind = request.which_oneof("event")
            if kind == "start":
                proc = self._find(request.start.process)
            elif kind == "data":
                if proc is None:
                    raise ConnectError("invalid_argument", "the input stream must begin with a start event")
                await self._write(proc, request.data.input)
            # keepalive: it only kept the connection busy
        return StreamInputResponse()

    async def send_signal(self, request: SendSignalRequest, ctx: RpcContext) -> SendSignalResponse:
        proc = self._find(request.process)
        signum = int(request.signal)
        if not 0 < signum < signal.NSIG:
            raise ConnectError("invalid_argument", f"signal {signum} is not a signal: use SIGTERM (15) or SIGKILL (9)")
        proc.send_signal(signum)
        return SendSignalResponse()

    async def update(self, request: UpdateRequest, ctx: RpcContext) -> UpdateResponse:
        proc = self._find(request.process)
        size = request.pty.size if request.pty is not None else None
        if size is not None:
            if not proc.is_pty:
                raise ConnectError("failed_precondition", f"process with pid {proc.pid} has no pty to resize")
            proc.resize(size.rows, size.cols)
        return UpdateResponse()

    def signal_all(self, signum: int) -> None:
        """Signal every running process's group (the agent's shutdown, tests)."""
        for proc in self._table.running():
            proc.send_signal(signum)

    # Helpers

    def _spawn(self, request: StartRequest, ctx: RpcContext) -> Process:
        config = request.process if request.process is not None else ProcessConfig()
        if not config.cmd:
            raise ConnectError("invalid_argument", "process.cmd is required")
        pty_size = None
        if request.pty is not None:
            size = request.pty.size
            pty_size = (size.rows, size.cols) if size is not None and size.rows and size.cols else DEFAULT_PTY_SIZE
        spec = Request(cmd=config.cmd, args=config.args, envs=config.envs, cwd=config.cwd, pty_size=pty_size)
        try:
            spawned = spawn(spec, ctx.user, self._environ)
        except SpawnError as exc:
            log.event("process_start_failed", cmd=config.cmd, user=ctx.user.name, error=exc.message)
            raise ConnectError(exc.code, exc.message) from None
        proc = Process(
            loop=asyncio.get_running_loop(), spawned=spawned, config=config, tag=request.tag, on_finished=self._finished
        )
        self._table.add(proc)
        proc.start(self._reaper)
        log.event(
            "process_started",
            pid=proc.pid,
            cmd=config.cmd,
            user=ctx.user.name,
            cwd=spawned.cwd,
            tag=request.tag,
            pty=pty_size is not None,
        )
        return proc

    def _finished(self, proc: Process) -> None:
        end = proc.end
        assert end is not None
        log.event("process_exited", pid=proc.pid, exit_code=proc.exit_code, status=end.status)
        self._table.ended(proc, asyncio.get_running_loop().time())

    def _prune(self) -> None:
        self._table.prune(asyncio.get_running_loop().time())

    def _find(self, selector: ProcessSelector | None, *, include_ended: bool = False) -> Process:
        self._prune()
        kind = selector.which_oneof("selector") if selector is not None else None
        if selector is None or kind is None:
            raise ConnectError("invalid_argument", "a process selector (pid or tag) is required")
        if kind == "pid":
            proc = self._table.find(pid=selector.pid, include_ended=include_ended)
            what = f"pid {selector.pid}"
        else:
            proc = self._table.find(tag=selector.tag, include_ended=include_ended)
            what = f"tag '{selector.tag}'"
        if proc is None:
            raise ConnectError("not_found", f"process with {what} not found")
        return proc

    async def _write(self, proc: Process, data: ProcessInput | None) -> None:
        kind = data.which_oneof("input") if data is not None else None
        if data is None or kind is None:
            return
        if kind == "pty" and not proc.is_pty:
            raise ConnectError("failed_precondition", f"process with pid {proc.pid} has no pty: send stdin")
        try:
            # Input for stdin goes to the terminal of a PTY process: that is its stdin.
            await proc.write_input(data.pty if kind == "pty" else data.stdin)
        except InputClosed as exc:
            raise ConnectError(
                "failed_precondition", f"process with pid {proc.pid} takes no more input: {exc}"
            ) from None


class _Follower:
    """One stream's view of a process: subscribed on creation, events out until the end."""

    def __init__(self, proc: Process) -> None:
        self._proc = proc
        self._wakeup = asyncio.Event()
        self._subscriber: Subscriber = proc.hub.subscribe(self._wakeup.set)

    async def events(self, ctx: RpcContext) -> AsyncIterator[ProcessEvent]:
        interval = _keepalive_seconds(ctx)
        closed = asyncio.ensure_future(ctx.closed.wait())
        closed.add_done_callback(lambda _: self._wakeup.set())
        try:
            yield ProcessEvent(start=ProcessEvent.StartEvent(pid=self._proc.pid))
            while True:
                event = self._subscriber.pop()
                if event is not None:
                    yield _to_proto(event)
                    if isinstance(event, End):
                        return
                    continue
                if ctx.closed.is_set():
                    return
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), interval)
                except asyncio.TimeoutError:
                    yield ProcessEvent(keepalive=ProcessEvent.KeepAlive())
        finally:
            closed.cancel()
            self._proc.hub.unsubscribe(self._subscriber)


def _keepalive_seconds(ctx: RpcContext) -> float:
    """The client's keepalive interval, and at most half its Connect-Timeout-Ms.

    The Python SDK sends no Keepalive-Ping-Interval but sends its request
    timeout (30 s) both as Connect-Timeout-Ms and as its socket read timeout:
    a command quiet for longer would time the stream out on the client.
    """
    interval = float(keepalive_interval(ctx))
    timeout_ms = ctx.headers.get("connect-timeout-ms", "").strip()
    if timeout_ms.isascii() and timeout_ms.isdigit() and int(timeout_ms) > 0:
        interval = min(interval, max(int(timeout_ms) / 2000, 0.5))
    return interval


def _to_proto(event: Event) -> ProcessEvent:
    if isinstance(event, Data):
        return ProcessEvent(data=ProcessEvent.DataEvent(**{event.stream: event.data}))
    return ProcessEvent(
        end=ProcessEvent.EndEvent(
            exit_code=event.exit_code, exited=event.exited, status=event.status, error=event.error
        )
    )
