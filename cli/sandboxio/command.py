"""What the user typed into what the agent runs, and what the process ended with into an exit code. Pure.

exec ID -- 'ls -la | wc -l'     one word: a shell line, run as `/bin/bash -l -c '<line>'`
                                (what the SDKs' commands.run sends: a login shell, so PATH and
                                the profile are the sandbox's own)
exec ID -- ls -la /tmp          several words: the program and its arguments, as given
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterable, Sequence

from cli.sandboxio.messages import CommandSpec, Ended

SHELL = "/bin/bash"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def command_from_argv(
    argv: Sequence[str], *, envs: dict[str, str] | None = None, cwd: str | None = None
) -> CommandSpec:
    if not argv:
        raise ValueError("no command given")
    if len(argv) == 1:
        return CommandSpec(cmd=SHELL, args=("-l", "-c", argv[0]), envs=envs, cwd=cwd)
    return CommandSpec(cmd=argv[0], args=tuple(argv[1:]), envs=envs, cwd=cwd)


def parse_envs(items: Iterable[str]) -> dict[str, str]:
    """`--env NAME=VALUE`, repeated; the value may be empty and may contain "="."""
    envs: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not _ENV_NAME.fullmatch(name):
            raise ValueError(f"--env takes NAME=VALUE, not {item!r}")
        envs[name] = value
    return envs


# glibc's description of each signal, as the agent writes it in "signal: <description>".
_SIGNALS_BY_DESCRIPTION = {(signal.strsignal(s) or "").lower(): int(s) for s in signal.Signals if signal.strsignal(s)}


def exit_status(end: Ended) -> int:
    """The exit code a shell would give: the code itself, or 128 + N for death by signal N.

    The agent reports a signal death as exit code -1 and status "signal: killed";
    the number is recovered from the wording. An unknown wording still fails (1).
    """
    if end.exited or end.exit_code >= 0:
        return end.exit_code & 0xFF
    description = end.status.removeprefix("signal: ").strip().lower()
    signum = _SIGNALS_BY_DESCRIPTION.get(description)
    if signum is None and description.startswith("signal "):
        number = description.removeprefix("signal ")
        signum = int(number) if number.isdigit() else None
    return 128 + signum if signum is not None else 1
