"""A started process on the event loop: reads its output, writes its input, sees its exit.

Output is read with ``loop.add_reader`` in chunks of READ_SIZE and published
to the process's Hub in the order the chunks were read; while the hub says
some stream is behind, reading stops and the process blocks on its own writes.

The end is published only once the output is drained. When the reaper
reports the exit, whatever the process wrote is already in its pipes and is
read at once; a pipe still open after that is held by something it left
running in the background (``cmd &``). Those get POST_EXIT_GRACE seconds to
close, then the end goes out and the rest of their output is read and
discarded, so a background job neither blocks nor dies of SIGPIPE. A PTY is
closed instead: a terminal that goes away hangs up its jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

from agent.init import Reaper
from agent.process.events import Data, End, end_from_exit_code
from agent.process.hub import Hub
from agent.process.spawn import Spawned, set_window_size

READ_SIZE = 64 * 1024
POST_EXIT_GRACE = 0.1
DRAIN_LIMIT = 1024 * 1024  # per fd, when draining at the exit regardless of backpressure


class InputClosed(Exception):
    """The process's input can no longer be written (it exited or closed it)."""


class FdWriter:
    """Writes to a non-blocking fd, in order, waiting for room on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self._loop = loop
        self._fd = fd
        self._lock = asyncio.Lock()  # one write at a time keeps concurrent inputs whole
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False

    async def write(self, data: bytes) -> None:
        async with self._lock:
            view = memoryview(data)
            while view:
                if self.closed:
                    raise InputClosed("input is closed")
                try:
                    written = os.write(self._fd, view)
                except BlockingIOError:
                    await self._writable()
                    continue
                except OSError as exc:  # EPIPE: nobody reads it any more; EIO: the PTY is gone
                    raise InputClosed(exc.strerror or str(exc)) from exc
                view = view[written:]

    async def _writable(self) -> None:
        waiter = self._waiter = self._loop.create_future()
        self._loop.add_writer(self._fd, _resolve, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if not self.closed:
                self._loop.remove_writer(self._fd)

    def close(self, *, close_fd: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        self._loop.remove_writer(self._fd)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(InputClosed("the process ended"))
        if close_fd:
            _close(self._fd)


class Process:
    """One started process. ``on_finished`` is called once its end is published."""

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        spawned: Spawned,
        config: object,
        tag: str | None,
        on_finished: Callable[[Process], None],
    ) -> None:
        self.pid = spawned.pid
        self.tag = tag
        self.config = config  # what the client asked for, as List reports it
        self.cwd = spawned.cwd
        self.hub = Hub(on_resume=self._resume)
        self.exit_code: int | None = None
        self._loop = loop
        self._popen = spawned.popen
        self._outputs = dict(spawned.outputs)
        self._pty_fd = spawned.pty_fd
        self._input = FdWriter(loop, spawned.input_fd)
        self._on_finished = on_finished
        self._reading = False
        self._grace: asyncio.TimerHandle | None = None

    @property
    def is_pty(self) -> bool:
        return self._pty_fd is not None

    @property
    def end(self) -> End | None:
        return self.hub.end

    def start(self, reaper: Reaper) -> None:
        """Watch for its exit and start reading. Call right after spawning, before any await."""
        reaper.watch(self.pid, self._on_exit)
        self._set_reading(True)

    async def write_input(self, data: bytes) -> None:
        await self._input.write(data)

    def send_signal(self, signum: int) -> None:
        if self.exit_code is not None:
            return  # reaped: its pid may already belong to someone else
        # The group: a shell's children too. Lookup errors: it exited, the reaper has not said so yet.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signum)

    def resize(self, rows: int, cols: int) -> None:
        """Set the terminal size; the kernel sends SIGWINCH to the terminal's foreground job."""
        if self._pty_fd is None:
            raise ValueError("not a PTY")
        if self.hub.end is None:
            set_window_size(self._pty_fd, rows, cols)

    # Output

    def _set_reading(self, on: bool) -> None:
        if on == self._reading:
            return
        self._reading = on
        for fd in self._outputs:
            if on:
                self._loop.add_reader(fd, self._on_readable, fd)
            else:
                self._loop.remove_reader(fd)

    def _resume(self) -> None:
        if self.hub.end is None:
            self._set_reading(True)

    def _on_readable(self, fd: int) -> None:
        self._read(fd)
        if self.hub.paused:
            self._set_reading(False)
        if self.exit_code is not None and not self._outputs:
            self._finish()

    def _read(self, fd: int) -> bool:
        """Read and publish one chunk; False when there is nothing more to read now."""
        try:
            chunk = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return False
        except OSError:  # EIO: a PTY whose other side is all closed, which is its EOF
            chunk = b""
        if not chunk:
            self._close_output(fd)
            return False
        self.hub.publish(Data(self._outputs[fd], chunk))
        return True

    def _drain(self) -> None:
        """Read what is there now, pause or not: bounded, as a background job may keep writing."""
        for fd in list(self._outputs):
            for _ in range(DRAIN_LIMIT // READ_SIZE):
                if not self._read(fd):
                    break

    def _close_output(self, fd: int) -> None:
        if self._reading:
            self._loop.remove_reader(fd)
        del self._outputs[fd]
        if fd != self._pty_fd:  # the PTY fd is also the input: closed with it
            _close(fd)

    # Exit

    def _on_exit(self, code: int) -> None:
        self.exit_code = code
        self._popen.returncode = code  # so that Popen never waits for the pid itself
        self._drain()
        if self._outputs:
            self._grace = self._loop.call_later(POST_EXIT_GRACE, self._finish)
        else:
            self._finish()

    def _finish(self) -> None:
        if self.hub.end is not None or self.exit_code is None:
            return
        if self._grace is not None:
            self._grace.cancel()
        self._drain()
        self._set_reading(False)
        for fd in list(self._outputs):
            if fd != self._pty_fd:
                _discard_until_eof(self._loop, fd)
        self._outputs.clear()
        self._input.close()
        self.hub.finish(end_from_exit_code(self.exit_code))
        self._on_finished(self)


def _discard_until_eof(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    def on_readable() -> None:
        try:
            if os.read(fd, READ_SIZE):
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        loop.remove_reader(fd)
        _close(fd)

    loop.add_reader(fd, on_readable)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
