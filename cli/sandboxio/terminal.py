"""`sandbox terminal`: the user's terminal joined to a PTY shell in the sandbox.

The local terminal goes into raw mode (every key, Ctrl-C included, goes to the
remote shell; its echo and line editing are the remote PTY's) and is restored
on the way out, whatever the way out is. One select() loop moves bytes:

    stdin readable      keystrokes -> channel.send_input
    channel readable    output -> stdout, as it arrives; the end -> leave with its exit code
    SIGWINCH            (a byte on a pipe, from the signal handler) -> channel.resize

SIGHUP and SIGTERM end the session through `Hangup`, so the remote shell is
killed and the terminal restored rather than the process dying mid-raw-mode.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import termios
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from cli.sandboxio.command import exit_status
from cli.sandboxio.errors import SandboxIoError
from cli.sandboxio.messages import CommandSpec, Ended, Output, PtySize
from cli.sandboxio.transport import Backend, PtyChannel

DEFAULT_SIZE = PtySize(cols=80, rows=24)
EOT = b"\x04"  # Ctrl-D: what a terminal sends at the end of input


def shell_spec(cwd: str | None = None) -> CommandSpec:
    # What the SDKs start for a terminal: an interactive login shell.
    return CommandSpec(cmd="/bin/bash", args=("-i", "-l"), envs={"TERM": "xterm-256color"}, cwd=cwd)


class Hangup(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(f"got signal {signum}")
        self.signum = signum


def local_size(*fds: int) -> PtySize:
    for fd in fds:
        with contextlib.suppress(OSError):
            size = os.get_terminal_size(fd)
            if size.columns and size.lines:
                return PtySize(cols=size.columns, rows=size.lines)
    return DEFAULT_SIZE


@contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """Raw mode on `fd` while inside; the saved settings come back on any exit (not a TTY: nothing to do)."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextmanager
def signal_pipe() -> Iterator[int]:
    """A pipe readable after each SIGWINCH; SIGHUP and SIGTERM raise Hangup. Handlers restored on exit."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)

    def on_winch(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe already says "resized"
            os.write(write_fd, b"w")

    def on_hangup(signum: int, frame: FrameType | None) -> None:
        raise Hangup(signum)

    handlers = {signal.SIGWINCH: on_winch, signal.SIGHUP: on_hangup, signal.SIGTERM: on_hangup}
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    try:
        yield read_fd
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        os.close(read_fd)
        os.close(write_fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def pump(channel: PtyChannel, *, stdin_fd: int, stdout_fd: int, winch_fd: int, size: Callable[[], PtySize]) -> int:
    """Move bytes until the remote process ends; return the exit code to leave with."""
    stdin_open = True
    while True:
        watched = [channel.fileno(), winch_fd] + ([stdin_fd] if stdin_open else [])
        ready, _, _ = select.select(watched, [], [])
        if channel.fileno() in ready:
            for event in channel.events():
                if isinstance(event, Output):
                    write_all(stdout_fd, event.data)
                elif isinstance(event, Ended):
                    return exit_status(event)
        if winch_fd in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(winch_fd, 1024)
            channel.resize(size())
        if stdin_open and stdin_fd in ready:
            data = os.read(stdin_fd, 65536)
            if data:
                channel.send_input(data)
            else:
                # Input piped in has run out: tell the shell as a terminal would, then stop reading.
                stdin_open = False
                channel.send_input(EOT)


def session(backend: Backend, spec: CommandSpec, *, stdin_fd: int = 0, stdout_fd: int = 1) -> int:
    """Open a PTY shell and join the terminal to it; return the shell's exit code."""

    def size() -> PtySize:
        return local_size(stdin_fd, stdout_fd)

    channel = backend.open_pty(spec, size())
    ended = False
    try:
        with signal_pipe() as winch_fd, raw_mode(stdin_fd):
            code = pump(channel, stdin_fd=stdin_fd, stdout_fd=stdout_fd, winch_fd=winch_fd, size=size)
        ended = True
        return code
    finally:
        if not ended:
            with contextlib.suppress(SandboxIoError):
                channel.kill()
        channel.close()
