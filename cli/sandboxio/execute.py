"""`sandbox exec`: run a command, stream its output as it comes, end with its exit code.

Output chunks are written and flushed as they arrive, stdout to stdout and
stderr to stderr, so a long command shows progress and pipelines keep
working. Leaving early (Ctrl-C, a closed pipe, a broken connection) kills the
remote process: the agent keeps processes alive when their stream goes away,
which suits the SDKs' background commands but would leave an interactive user's
command running unseen. The process carries a unique tag so that it can be
killed even when the interruption comes before its pid is known.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
from typing import BinaryIO

from cli.sandboxio.command import exit_status
from cli.sandboxio.errors import ConnectionLost, SandboxIoError
from cli.sandboxio.messages import CommandSpec, Ended, Output, Started
from cli.sandboxio.transport import Backend

INTERRUPTED = 128 + signal.SIGINT
BROKEN_PIPE = 128 + signal.SIGPIPE


def new_tag() -> str:
    return "scalebox-cli-" + secrets.token_hex(6)


def run(backend: Backend, spec: CommandSpec, *, stdout: BinaryIO, stderr: BinaryIO) -> int:
    """Run `spec`; return the exit code to leave with (the command's, or 130 / 141 when cut short)."""
    tag = new_tag()
    pid: int | None = None
    finished = False
    try:
        with backend.start(spec, tag=tag) as events:
            for event in events:
                if isinstance(event, Started):
                    pid = event.pid
                elif isinstance(event, Output) and event.data:
                    sink = stderr if event.stream == "stderr" else stdout
                    sink.write(event.data)
                    sink.flush()
                elif isinstance(event, Ended):
                    finished = True
                    return exit_status(event)
        raise ConnectionLost("the command's stream ended before the command did")
    except KeyboardInterrupt:
        return INTERRUPTED
    except BrokenPipeError:
        return BROKEN_PIPE
    finally:
        if not finished:
            _kill(backend, pid, tag)


def _kill(backend: Backend, pid: int | None, tag: str) -> None:
    # Best effort: we are already leaving with another error (or the user's
    # Ctrl-C) and must not hide it behind a failure to clean up.
    with contextlib.suppress(SandboxIoError):
        if pid is not None:
            backend.kill(pid=pid)
        else:
            backend.kill(tag=tag)
