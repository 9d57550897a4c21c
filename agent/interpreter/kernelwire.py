"""The agent <-> kernel messages (the protocol is in agent/interpreter/__init__.py); pure.

``encode_request`` makes the line the agent writes; ``EventReader`` turns the
kernel's bytes into events, line by line, and raises KernelProtocolError on
anything that is not one (the agent then treats the kernel as broken).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import NamedTuple, Union

MAX_LINE = 64 * 1024 * 1024  # one event: a large figure is a few MB of base64


class Ready(NamedTuple):
    pass


class ResultEvent(NamedTuple):
    data: dict[str, str]  # MIME type -> text
    main: bool


class ErrorEvent(NamedTuple):
    name: str
    value: str
    traceback: str


class Done(NamedTuple):
    pass


class Output(NamedTuple):
    """Output, from the kernel's stdout or stderr pipe or sent as an event."""

    stream: str  # "stdout" or "stderr"
    text: str


Event = Union[Ready, ResultEvent, ErrorEvent, Done, Output]


class KernelProtocolError(Exception):
    pass


def encode_request(code: str, env: Mapping[str, str]) -> bytes:
    # ensure_ascii: the line is plain ASCII whatever the code holds (lone surrogates included).
    return json.dumps({"code": code, "env": dict(env)}).encode("ascii") + b"\n"


def parse_event(line: bytes) -> Event:
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise KernelProtocolError(f"not a JSON line: {line[:80]!r}") from exc
    if not isinstance(obj, dict):
        raise KernelProtocolError(f"not a JSON object: {line[:80]!r}")
    kind = obj.get("event")
    if kind == "ready":
        return Ready()
    if kind == "done":
        return Done()
    if kind == "result":
        data = obj.get("data")
        if not isinstance(data, dict):
            raise KernelProtocolError("a result without a data object")
        return ResultEvent({str(k): v for k, v in data.items() if isinstance(v, str)}, bool(obj.get("main")))
    if kind in ("stdout", "stderr"):
        return Output(kind, _text(obj, "text"))
    if kind == "error":
        return ErrorEvent(_text(obj, "name") or "Error", _text(obj, "value"), _text(obj, "traceback"))
    raise KernelProtocolError(f"unknown event {str(kind)[:40]!r}")


def _text(obj: dict[str, object], key: str) -> str:
    value = obj.get(key)
    return value if isinstance(value, str) else ""


class EventReader:
    """Bytes from the kernel's event pipe in, whole events out."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._buffer = bytearray()
        self._max_line = max_line

    def feed(self, data: bytes) -> list[Event]:
        self._buffer += data
        events = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                break
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if line.strip():
                events.append(parse_event(line))
        if len(self._buffer) > self._max_line:
            raise KernelProtocolError(f"an event line longer than {self._max_line} bytes")
        return events
