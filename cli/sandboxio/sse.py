"""Server-Sent Events, pure: bytes in, events out (the API's exec stream, used on the fallback path).

Only what the API sends is needed: `event:` and `data:` lines, an event ending
at a blank line, comments (`:`) ignored. Lines may end in LF, CRLF or CR.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cli.sandboxio.errors import ProtocolError, RemoteError
from cli.sandboxio.messages import STREAMS, Ended, Output, ProcessEvent, Started, decode_json

_EOL = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str
    data: str


class SseParser:
    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SseEvent]:
        self._buffer += chunk
        events: list[SseEvent] = []
        while True:
            line, found = self._next_line()
            if not found:
                return events
            if event := self._line(line):
                events.append(event)

    def _next_line(self) -> tuple[str, bool]:
        match = _EOL.search(self._buffer)
        if match is None or (match.group() == b"\r" and match.end() == len(self._buffer)):
            return "", False  # no line yet, or a CR at the very end that may be the first half of CRLF
        line = self._buffer[: match.start()].decode("utf-8", "replace")
        self._buffer = self._buffer[match.end() :]
        return line, True

    def _line(self, line: str) -> SseEvent | None:
        if not line:
            if not self._data and not self._event:
                return None
            event = SseEvent(self._event or "message", "\n".join(self._data))
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None


def decode_exec_event(event: SseEvent) -> ProcessEvent | None:
    """One event of the API's `exec/stream` as a process event (None for kinds to skip).

    The API sends output as text (decoded as UTF-8 with replacement), so bytes
    that are not UTF-8 do not survive this path; the direct path is exact.
    """
    if event.event not in ("start", "stdout", "stderr", "pty", "end", "error"):
        return None
    body = decode_json(event.data.encode(), f"'{event.event}' event from the API")
    if not isinstance(body, dict):
        raise ProtocolError(f"the API sent an '{event.event}' event that is not a JSON object")
    if event.event == "start":
        return Started(pid=int(body.get("pid") or 0))
    if event.event in STREAMS:
        return Output(stream=event.event, data=str(body.get("data", "")).encode())
    if event.event == "end":
        status = str(body.get("status") or "")
        error = body.get("error")
        return Ended(
            exit_code=int(body.get("exit_code") or 0),
            exited=status.startswith("exit status"),
            status=status,
            error=None if error is None else str(error),
        )
    raise RemoteError(str(body.get("code") or "unavailable"), str(body.get("message") or "the command failed"))
