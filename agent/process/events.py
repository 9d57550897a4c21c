"""What a process produces, independent of the wire: output chunks and its end.

The end follows Go's ``os/exec`` (the reference agent is written in Go and the
SDKs were built against it): a normal exit gives ``exit_code`` N, ``exited``
true and status ``"exit status N"``; a death by signal gives ``exit_code`` -1,
``exited`` false and status ``"signal: killed"``. ``error`` repeats the status
whenever the process did not exit 0, as Go's ``cmd.Wait()`` error does. The SDKs
only test ``exit_code != 0`` (then raise ``CommandExitException``), so any
non-zero value works for them; -1 keeps parity with the hosted service.
"""

from __future__ import annotations

import signal
from typing import NamedTuple, Union

STDOUT = "stdout"
STDERR = "stderr"
PTY = "pty"


class Data(NamedTuple):
    stream: str  # STDOUT, STDERR or PTY: the name of the DataEvent oneof member
    data: bytes


class End(NamedTuple):
    exit_code: int
    exited: bool
    status: str
    error: str | None  # a string annotation: NamedTuple does not evaluate it


Event = Union[Data, End]


def end_from_exit_code(code: int) -> End:
    """The end for a ``subprocess``-style exit code (negative: killed by that signal)."""
    if code >= 0:
        status = f"exit status {code}"
        return End(exit_code=code, exited=True, status=status, error=None if code == 0 else status)
    status = f"signal: {signal_description(-code)}"
    return End(exit_code=-1, exited=False, status=status, error=status)


def signal_description(signum: int) -> str:
    """Go's wording for a signal ("killed", "terminated"): glibc's, lower-cased."""
    try:
        text = signal.strsignal(signum)
    except ValueError:
        text = None
    return text.lower() if text else f"signal {signum}"
