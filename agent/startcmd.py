"""The sandbox's start command: ``/bin/sh -c CMD`` in its own session and process group.

Signals go to the whole group, so a shell's children get them too. Its exit
is logged and otherwise changes nothing: the agent keeps serving.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Mapping

from agent import log
from agent.config import child_environ
from agent.init import Reaper, signal_name

POLL_SECONDS = 0.05


class StartCommand:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc
        self.pid = proc.pid  # also the process group id
        self.exit_code: int | None = None

    @classmethod
    def spawn(cls, command: str, *, cwd: str, environ: Mapping[str, str], reaper: Reaper) -> StartCommand:
        """Start ``command``; raises OSError when it cannot be (bad cwd, no /bin/sh)."""
        proc = subprocess.Popen(
            ["/bin/sh", "-c", command],
            cwd=cwd,
            env=child_environ(environ),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        started = cls(proc)
        reaper.watch(proc.pid, started._on_exit)
        log.event("start_cmd_started", pid=proc.pid, cwd=cwd)
        return started

    def _on_exit(self, code: int) -> None:
        self.exit_code = code
        # The reaper already collected it; Popen must not wait for the pid again.
        self._proc.returncode = code
        fields: dict[str, object] = {"pid": self.pid, "exit_code": code}
        if code < 0:
            fields["signal"] = signal_name(-code)
        log.event("start_cmd_exited", **fields)

    def send_signal(self, signum: int) -> bool:
        """Signal the whole process group; False when it is gone."""
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            return False
        return True

    def group_alive(self) -> bool:
        if self.exit_code is None:
            return True
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    async def stop(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for the group to exit, then SIGKILL it.

        The caller has already forwarded the polite signal.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.group_alive() and loop.time() < deadline:
            await asyncio.sleep(POLL_SECONDS)
        if not self.group_alive():
            return
        log.event("start_cmd_killed", pid=self.pid, grace_seconds=grace)
        self.send_signal(signal.SIGKILL)
        # Give the reaper a moment to log the exit.
        deadline = loop.time() + 0.5
        while self.exit_code is None and loop.time() < deadline:
            await asyncio.sleep(POLL_SECONDS / 5)
