"""A kernel process on the event loop: start it, run code in it, interrupt it, see it die.

One run at a time. A run's events (output chunks, results, an error, the
end) go to its queue as the kernel produces them; the run is over when the
kernel says ``done`` or exits, whether or not anyone still reads the queue.
So a client that leaves only has to interrupt: the kernel finishes the run
and takes the next one, and nothing waits on the departed reader.

Interrupt: SIGINT to the kernel's process group, again after
INTERRUPT_RESEND if the run has not ended, then SIGKILL after
INTERRUPT_GRACE: the run ends as an exit, and the context starts a fresh
kernel on its next execution.

Backpressure: while a run's queue holds more than QUEUE_LIMIT bytes of
output, the kernel's pipes are not read, so the code blocks on its own
writes instead of the agent buffering without bound.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Mapping
from typing import NamedTuple, Union

from agent.init import Reaper
from agent.interpreter.kernelwire import (
    Done,
    ErrorEvent,
    EventReader,
    KernelProtocolError,
    Output,
    Ready,
    ResultEvent,
    encode_request,
)
from agent.interpreter.languages import Language
from agent.process.running import FdWriter, InputClosed
from agent.process.spawn import SpawnError, build_environ, identity
from agent.users import User

READ_SIZE = 64 * 1024
QUEUE_LIMIT = 1024 * 1024
MERGE_LIMIT = 256 * 1024
START_TIMEOUT = 30.0
INTERRUPT_RESEND = 1.0
INTERRUPT_GRACE = 3.0


class Exited(NamedTuple):
    """The kernel died during the run (or was killed after an interrupt it ignored)."""

    exit_code: int
    killed: bool


RunEvent = Union[Output, ResultEvent, ErrorEvent, Done, Exited]


class KernelStartError(Exception):
    """The kernel could not start; ``code`` is the Connect code to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Run:
    """One execution's events, in order, ending with Done or Exited.

    Output waiting in the queue is handed out merged (adjacent chunks of one
    stream, up to MERGE_LIMIT): a loop printing lines makes one message per
    read, not one per line, which matters most to clients that get every
    message padded to 8 KiB (agent/connect/protocol.py).
    """

    def __init__(self, kernel: Kernel) -> None:
        self._kernel = kernel
        self._queue: deque[RunEvent] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.queued_bytes = 0
        self.finished = False
        self.abandoned = False
        self.started_ns = time.time_ns()

    def push(self, event: RunEvent) -> None:
        if self.abandoned:
            return
        if isinstance(event, Output):
            self.queued_bytes += len(event.text)
        self._queue.append(event)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next(self) -> RunEvent | None:
        """The next event, or None after the last one."""
        while not self._queue:
            if self.finished:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        event = self._queue.popleft()
        if isinstance(event, Output):
            parts = [event.text]
            size = len(event.text)
            while self._queue and size < MERGE_LIMIT:
                following = self._queue[0]
                if not isinstance(following, Output) or following.stream != event.stream:
                    break
                self._queue.popleft()
                parts.append(following.text)
                size += len(following.text)
            self.queued_bytes -= size
            self._kernel.resume_output()
            if len(parts) > 1:
                event = Output(event.stream, "".join(parts))
        return event

    def interrupt(self) -> None:
        """Stop the code (it keeps the kernel's state if the kernel survives)."""
        if not self.finished:
            self._kernel.interrupt()

    def abandon(self) -> None:
        """Nobody reads this run any more: interrupt it and drop its events."""
        self.abandoned = True
        self._queue.clear()
        self.queued_bytes = 0
        self.interrupt()
        self._kernel.resume_output()


class Kernel:
    def __init__(self, loop: asyncio.AbstractEventLoop, language: Language, popen: subprocess.Popen[bytes]) -> None:
        self.language = language
        self.pid = popen.pid
        self.exit_code: int | None = None
        self._loop = loop
        self._popen = popen
        self._events = EventReader()
        self._decoders = {
            "stdout": codecs.getincrementaldecoder("utf-8")("replace"),
            "stderr": codecs.getincrementaldecoder("utf-8")("replace"),
        }
        self._outputs: dict[int, str] = {}
        self._events_fd = -1
        self._requests: FdWriter | None = None
        self._ready: asyncio.Future[None] = loop.create_future()
        self._run: Run | None = None
        self._idle = asyncio.Event()
        self._output_paused = False
        self._timers: list[asyncio.TimerHandle] = []
        self._killed = False
        self._startup_stderr = bytearray()

    # --- starting ----------------------------------------------------------------

    @classmethod
    async def start(
        cls, language: Language, user: User, cwd: str, agent_environ: Mapping[str, str], reaper: Reaper
    ) -> Kernel:
        loop = asyncio.get_running_loop()
        ours: list[int] = []
        theirs: list[int] = []
        try:
            requests_r, requests_w = os.pipe()
            events_r, events_w = os.pipe()
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            ours += [requests_w, events_r, out_r, err_r]
            theirs += [requests_r, events_w, out_w, err_w]
            environ = build_environ(agent_environ, user, {})
            environ["SCALEBOX_KERNEL_IN"] = str(requests_r)
            environ["SCALEBOX_KERNEL_OUT"] = str(events_w)
            popen = _popen(language, cwd, environ, user, out_w, err_w, (requests_r, events_w))
        except BaseException:
            _close_all(ours)
            raise
        finally:
            _close_all(theirs)
        for fd in ours:
            os.set_blocking(fd, False)
        kernel = cls(loop, language, popen)
        reaper.watch(popen.pid, kernel._on_exit)
        kernel._attach(requests_w, events_r, out_r, err_r)
        try:
            await asyncio.wait_for(asyncio.shield(kernel._ready), START_TIMEOUT)
        except asyncio.TimeoutError:
            kernel.kill()
            raise KernelStartError(
                "deadline_exceeded", f"the {language.name} kernel did not start within {START_TIMEOUT:.0f} s"
            ) from None
        except KernelStartError:
            kernel.kill()
            raise
        kernel._idle.set()
        return kernel

    def _attach(self, requests_w: int, events_r: int, out_r: int, err_r: int) -> None:
        self._requests = FdWriter(self._loop, requests_w)
        self._events_fd = events_r
        self._outputs = {out_r: "stdout", err_r: "stderr"}
        self._loop.add_reader(events_r, self._read_events)
        for fd in self._outputs:
            self._loop.add_reader(fd, self._read_output, fd)

    @property
    def alive(self) -> bool:
        return self.exit_code is None and not self._killed

    # --- running -----------------------------------------------------------------

    async def run(self, code: str, env: Mapping[str, str]) -> Run:
        """Start running ``code`` once the kernel is free; raise KernelGone if it died first."""
        while not self._idle.is_set():
            await self._idle.wait()
        if not self.alive or self._requests is None:
            raise KernelGone(f"the {self.language.name} kernel has exited")
        self._idle.clear()
        run = self._run = Run(self)
        with contextlib.suppress(InputClosed):  # it is dying: its exit ends the run
            await self._requests.write(encode_request(code, env))
        return run

    def interrupt(self) -> None:
        if self._run is None or self._run.finished or not self.alive:
            return
        self._signal(signal.SIGINT)
        run = self._run
        self._timers.append(self._loop.call_later(INTERRUPT_RESEND, self._resend_interrupt, run))
        self._timers.append(self._loop.call_later(INTERRUPT_GRACE, self._kill_if_running, run))

    def _resend_interrupt(self, run: Run) -> None:
        # The first SIGINT can land while the kernel is still reading the request, with
        # interrupts ignored; once the code runs, another one reaches it.
        if run is self._run and not run.finished:
            self._signal(signal.SIGINT)

    def _kill_if_running(self, run: Run) -> None:
        if run is self._run and not run.finished:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the kernel's process group; the exit ends the current run."""
        if self.exit_code is None:
            self._killed = True
            self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def resume_output(self) -> None:
        run = self._run
        if self._output_paused and (run is None or run.queued_bytes < QUEUE_LIMIT) and self.exit_code is None:
            self._output_paused = False
            for fd in self._outputs:
                self._loop.add_reader(fd, self._read_output, fd)
            if self._events_fd >= 0:
                self._loop.add_reader(self._events_fd, self._read_events)

    # --- reading -----------------------------------------------------------------

    def _read_output(self, fd: int) -> None:
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._loop.remove_reader(fd)
            return
        self._deliver_output(fd, data)
        self._pause_if_behind()

    def _pause_if_behind(self) -> None:
        run = self._run
        if run is not None and run.queued_bytes >= QUEUE_LIMIT and not self._output_paused:
            self._output_paused = True
            for fd in self._reading_fds():
                self._loop.remove_reader(fd)

    def _reading_fds(self) -> list[int]:
        return [*self._outputs, self._events_fd] if self._events_fd >= 0 else list(self._outputs)

    def _deliver_output(self, fd: int, data: bytes) -> None:
        stream = self._outputs[fd]
        if self._ready.done() is False:
            if stream == "stderr":
                self._startup_stderr += data[: 4096 - len(self._startup_stderr)]
            return
        text = self._decoders[stream].decode(data)
        if text and self._run is not None and not self._run.finished:
            self._run.push(Output(stream, text))
        # Output while idle (a background thread, a child left running) has no execution to go to.

    def _drain_output(self) -> None:
        """Read what the kernel wrote before its latest event, so that order is kept."""
        for fd in list(self._outputs):
            for _ in range(64):  # bounded: a child still writing must not keep the loop here
                try:
                    data = os.read(fd, READ_SIZE)
                except OSError:
                    break
                if not data:
                    break
                self._deliver_output(fd, data)

    def _read_events(self) -> None:
        try:
            data = os.read(self._events_fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._loop.remove_reader(self._events_fd)
            return
        try:
            events = self._events.feed(data)
        except KernelProtocolError as exc:
            self._protocol_error(str(exc))
            return
        for event in events:
            self._drain_output()
            self._handle(event)
        self._pause_if_behind()

    def _handle(self, event: object) -> None:
        if isinstance(event, Ready):
            if not self._ready.done():
                self._ready.set_result(None)
            return
        run = self._run
        if run is None or run.finished:
            return  # an event outside a run: a kernel bug, harmless
        if isinstance(event, Done):
            self._finish(run, event)
        elif isinstance(event, (ResultEvent, ErrorEvent, Output)):
            run.push(event)

    def _finish(self, run: Run, last: Done | Exited) -> None:
        for stream, decoder in self._decoders.items():
            tail = decoder.decode(b"", final=True)
            decoder.reset()
            if tail:
                run.push(Output(stream, tail))
        run.push(last)
        run.finished = True
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self._run = None
        self._idle.set()
        self.resume_output()

    def _protocol_error(self, message: str) -> None:
        if self._run is not None and not self._run.finished:
            self._run.push(ErrorEvent("KernelError", f"the kernel broke its protocol: {message}", ""))
        self.kill()

    def _on_exit(self, exit_code: int) -> None:
        self.exit_code = exit_code
        # Everything it wrote is in the pipes now: read it, so the run sees its last words.
        with contextlib.suppress(KernelProtocolError):
            try:
                data = os.read(self._events_fd, READ_SIZE)
            except OSError:
                data = b""
            while data:
                for event in self._events.feed(data):
                    self._drain_output()
                    self._handle(event)
                try:
                    data = os.read(self._events_fd, READ_SIZE)
                except OSError:
                    break
        self._drain_output()
        if not self._ready.done():
            detail = self._startup_stderr.decode("utf-8", "replace").strip()
            message = f"the {self.language.name} kernel exited with status {exit_code} while starting"
            self._ready.set_exception(KernelStartError("internal", f"{message}: {detail}" if detail else message))
            self._ready.exception()  # retrieved here: start() may already have given up
        if self._run is not None and not self._run.finished:
            self._finish(self._run, Exited(exit_code, self._killed))
        self._close()
        self._idle.set()

    def _close(self) -> None:
        for fd in [self._events_fd, *self._outputs]:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(fd)
            with contextlib.suppress(OSError):
                os.close(fd)
        self._outputs = {}
        self._events_fd = -1
        if self._requests is not None:
            self._requests.close()


class KernelGone(Exception):
    pass


def _popen(
    language: Language,
    cwd: str,
    environ: dict[str, str],
    user: User,
    stdout: int,
    stderr: int,
    pass_fds: tuple[int, ...],
) -> subprocess.Popen[bytes]:
    try:
        ids = identity(user)
    except SpawnError as exc:
        raise KernelStartError(exc.code, exc.message) from None
    try:
        return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
            list(language.argv),
            cwd=cwd,
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            pass_fds=pass_fds,
            start_new_session=True,  # its own group: an interrupt reaches the code's children too
            close_fds=True,
            **ids,
        )
    except FileNotFoundError as exc:
        if exc.filename in (language.program, None):
            raise KernelStartError(
                "failed_precondition",
                f"{language.name} needs '{language.program}', which this sandbox does not have: "
                "create the sandbox from the code-interpreter template",
            ) from None
        raise KernelStartError("invalid_argument", f"cannot start the {language.name} kernel: {exc}") from None
    except OSError as exc:
        raise KernelStartError("internal", f"cannot start the {language.name} kernel: {exc}") from None


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
