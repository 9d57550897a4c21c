"""PID 1 duties: reap every child, and route signals to the agent.

As PID 1 of the container the agent inherits every orphan in it, and the
kernel delivers it no signal it has no handler for. So SIGCHLD drives a
reap-everything loop (``waitpid(-1, WNOHANG)``), and the signals a container
runtime or a user sends to the container get handlers that forward them.

Because the agent reaps every child, nothing else in it may wait for a child
by pid (``subprocess.Popen.wait``, asyncio child watchers): register the pid
with ``Reaper.watch`` and get its exit code from there.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

FORWARDED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
SHUTDOWN_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
PR_SET_CHILD_SUBREAPER = 36


class Reaper:
    """Reaps every exited child; hands the exit code of watched pids to a callback.

    Exit codes follow ``subprocess``: negative for a death by signal.
    """

    def __init__(self) -> None:
        self._watchers: dict[int, Callable[[int], None]] = {}

    def watch(self, pid: int, on_exit: Callable[[int], None]) -> None:
        self._watchers[pid] = on_exit

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            # Orphans are reaped silently: a busy sandbox makes many.
            on_exit = self._watchers.pop(pid, None)
            if on_exit is not None:
                on_exit(os.waitstatus_to_exitcode(status))


def install_signal_handlers(loop: asyncio.AbstractEventLoop, reaper: Reaper, on_signal: Callable[[int], None]) -> None:
    """Reap on SIGCHLD; call ``on_signal(signum)`` for each of FORWARDED_SIGNALS."""
    loop.add_signal_handler(signal.SIGCHLD, reaper.reap)
    for signum in FORWARDED_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    # A child may have exited before SIGCHLD had a handler.
    reaper.reap()


def become_subreaper() -> bool:
    """Have orphans handed to the agent even when it is not PID 1 (tests, development).

    Then it reaps them as it does in a container, and a start command's
    orphaned children leave its process group promptly on shutdown.
    """
    if os.getpid() == 1:
        return True
    try:
        import ctypes  # only off PID 1: in a sandbox its memory would be wasted

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (ImportError, OSError, AttributeError):
        return False


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)
