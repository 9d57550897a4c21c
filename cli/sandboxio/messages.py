"""The agent's messages in their proto3 JSON form, pure: dicts out, typed events in.

Shapes follow agent/proto/messages.py under the proto3 JSON mapping
(lowerCamelCase names, bytes as base64, int64 as strings, enums by name).
Requests are built as plain dicts; answers are decoded into small frozen
dataclasses so that the rest of the CLI never touches raw JSON. A field that
does not fit its type is a `ProtocolError`, never a `KeyError`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from agent.connect.errors import CODE_FOR_HTTP_STATUS
from cli.sandboxio.errors import ProtocolError, RemoteError

PROCESS = "sandboxagent.Process"
FILESYSTEM = "sandboxagent.Filesystem"

Stream = Literal["stdout", "stderr", "pty"]
STREAMS: tuple[Stream, ...] = ("stdout", "stderr", "pty")


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """A process to start: what ProcessConfig carries."""

    cmd: str
    args: tuple[str, ...] = ()
    envs: Mapping[str, str] | None = None
    cwd: str | None = None

    def to_json(self) -> dict[str, Any]:
        config: dict[str, Any] = {"cmd": self.cmd, "args": list(self.args), "envs": dict(self.envs or {})}
        if self.cwd is not None:
            config["cwd"] = self.cwd
        return config


@dataclass(frozen=True, slots=True)
class PtySize:
    cols: int
    rows: int

    def to_json(self) -> dict[str, Any]:
        return {"size": {"cols": self.cols, "rows": self.rows}}


# --- process events --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Started:
    pid: int


@dataclass(frozen=True, slots=True)
class Output:
    stream: Stream
    data: bytes


@dataclass(frozen=True, slots=True)
class Ended:
    exit_code: int  # -1 when killed by a signal (Go's convention, which the agent keeps)
    exited: bool
    status: str  # "exit status 3", "signal: killed"
    error: str | None = None


@dataclass(frozen=True, slots=True)
class KeepAlive:
    pass


ProcessEvent = Started | Output | Ended | KeepAlive


def start_request(spec: CommandSpec, *, pty: PtySize | None = None, tag: str | None = None) -> dict[str, Any]:
    request: dict[str, Any] = {"process": spec.to_json()}
    if pty is not None:
        request["pty"] = pty.to_json()
    if tag is not None:
        request["tag"] = tag
    return request


def selector(*, pid: int | None = None, tag: str | None = None) -> dict[str, Any]:
    if (pid is None) == (tag is None):
        raise ValueError("a process selector takes exactly one of pid or tag")
    return {"pid": pid} if pid is not None else {"tag": tag}


def send_input_request(pid: int, data: bytes, *, pty: bool) -> dict[str, Any]:
    field = "pty" if pty else "stdin"
    return {"process": {"pid": pid}, "input": {field: base64.b64encode(data).decode("ascii")}}


def update_request(pid: int, size: PtySize) -> dict[str, Any]:
    return {"process": {"pid": pid}, "pty": size.to_json()}


def kill_request(*, pid: int | None = None, tag: str | None = None) -> dict[str, Any]:
    return {"process": selector(pid=pid, tag=tag), "signal": "SIGNAL_SIGKILL"}


def decode_event(message: Any) -> ProcessEvent:
    """One StartResponse / ConnectResponse (`{"event": {...}}`) as a typed event."""
    event = _object(_object(message, "message").get("event"), "event")
    if "start" in event:
        return Started(pid=_int(_object(event["start"], "start").get("pid", 0), "start.pid"))
    if "data" in event:
        data = _object(event["data"], "data")
        for stream in STREAMS:
            if stream in data:
                return Output(stream=stream, data=_bytes(data[stream], f"data.{stream}"))
        return Output(stream="stdout", data=b"")  # an empty oneof: nothing to show
    if "end" in event:
        end = _object(event["end"], "end")
        error = end.get("error")
        return Ended(
            exit_code=_int(end.get("exitCode", end.get("exit_code", 0)), "end.exitCode"),
            exited=bool(end.get("exited", False)),
            status=str(end.get("status", "")),
            error=None if error is None else str(error),
        )
    if "keepalive" in event:
        return KeepAlive()
    raise ProtocolError(f"the sandbox sent a process event of an unknown kind ({', '.join(event) or 'empty'})")


def decode_json(payload: bytes, what: str) -> Any:
    try:
        return json.loads(payload or b"{}")
    except (ValueError, RecursionError):
        raise ProtocolError(f"the sandbox's {what} is not valid JSON") from None


def end_of_stream_error(payload: bytes) -> RemoteError | None:
    """The error an end-of-stream message carries, or None when the stream ended cleanly."""
    body = _object(decode_json(payload, "end-of-stream message"), "end-of-stream message")
    error = body.get("error")
    if not error:
        return None
    error = _object(error, "error")
    return RemoteError(str(error.get("code") or "unknown"), str(error.get("message") or "unknown error"))


def error_from_body(status: int, body: bytes) -> RemoteError:
    """A non-200 answer as a RemoteError.

    The agent answers `{"code", "message"}`; the gateway and the API answer their
    envelope (`{"error", "message", "code"}`) where an API code of the agent's
    errors reads `agent_<code>`. Anything else keeps the HTTP status.
    """
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("message"), str):
        return RemoteError(_STATUS_CODES.get(status, "unknown"), f"the sandbox answered HTTP {status}")
    code = data.get("code")
    if not isinstance(code, str) or not code:
        code = data.get("error") if isinstance(data.get("error"), str) else None
    code = (code or _STATUS_CODES.get(status, "unknown")).removeprefix("agent_")
    return RemoteError(code, data["message"])


# The gateway answers 409 for a sandbox that is not running (see gateway/errors.py).
_STATUS_CODES = {**CODE_FOR_HTTP_STATUS, 409: "failed_precondition"}


# --- files ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    type: str  # "file", "directory" or "unspecified"
    path: str
    size: int
    mode: int
    permissions: str
    owner: str
    group: str
    modified_time: str  # RFC 3339, as the agent sent it; "" when unknown
    symlink_target: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "path": self.path,
            "size": self.size,
            "mode": self.mode,
            "permissions": self.permissions,
            "owner": self.owner,
            "group": self.group,
            "modified_time": self.modified_time or None,
            "symlink_target": self.symlink_target,
        }


_FILE_TYPES = {"FILE_TYPE_FILE": "file", "FILE_TYPE_DIRECTORY": "directory", 1: "file", 2: "directory"}


def list_dir_request(path: str, depth: int) -> dict[str, Any]:
    return {"path": path, "depth": depth}


def decode_entries(message: Any) -> list[Entry]:
    entries = _object(message, "ListDir answer").get("entries", [])
    if not isinstance(entries, list):
        raise ProtocolError("the sandbox's ListDir answer has entries that are not a list")
    out = []
    for raw in entries:
        item = _object(raw, "entry")
        target = item.get("symlinkTarget", item.get("symlink_target"))
        out.append(
            Entry(
                name=str(item.get("name", "")),
                type=_FILE_TYPES.get(item.get("type", 0), "unspecified"),
                path=str(item.get("path", "")),
                size=_int(item.get("size", 0), "entry.size"),
                mode=_int(item.get("mode", 0), "entry.mode"),
                permissions=str(item.get("permissions", "")),
                owner=str(item.get("owner", "")),
                group=str(item.get("group", "")),
                modified_time=str(item.get("modifiedTime", item.get("modified_time", "")) or ""),
                symlink_target=None if target is None else str(target),
            )
        )
    return out


# --- JSON field helpers ---------------------------------------------------------------------


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"the sandbox's {what} is not a JSON object")
    return value


def _int(value: Any, what: str) -> int:
    # proto3 JSON writes 64-bit integers as strings; 32-bit ones as numbers.
    if isinstance(value, bool):
        raise ProtocolError(f"the sandbox sent {what} as a boolean, not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise ProtocolError(f"the sandbox sent {what} that is not an integer: {value!r}")


def _bytes(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise ProtocolError(f"the sandbox sent {what} that is not base64 text")
    try:
        # proto3 JSON accepts both alphabets and missing padding on input.
        text = value.replace("-", "+").replace("_", "/")
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"the sandbox sent {what} that is not valid base64") from None
