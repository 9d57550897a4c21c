"""Requests of the API routes that run commands in a sandbox. Pure functions."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from controlplane.api.schemas import bool_field, int_field, json_object, string_map_field
from controlplane.errors import BadRequest

_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_EXEC_TIMEOUT = 3600


@dataclass(frozen=True, kw_only=True)
class ExecRequest:
    cmd: str
    args: list[str] = field(default_factory=list)
    envs: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    user: str = "root"
    timeout: int = 60
    tag: str | None = None
    background: bool = False

    def process_config(self) -> dict[str, Any]:
        """The agent's ProcessConfig, in its JSON form."""
        config: dict[str, Any] = {"cmd": self.cmd, "args": self.args, "envs": self.envs}
        if self.cwd is not None:
            config["cwd"] = self.cwd
        return config


def _text(body: dict[str, Any], key: str, limit: int = 4096) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > limit or "\x00" in value:
        raise BadRequest(f"{key} must be a non-empty string of at most {limit} characters", code="invalid_field")
    return value


def parse_exec(body: Any, *, default_user: str = "root") -> ExecRequest:
    """`{"command": "ls -la"}` runs through `bash -l -c`; `{"cmd": "ls", "args": [...]}` runs as given."""
    body = json_object(body, "request body")
    command = _text(body, "command", 256 * 1024)
    cmd = _text(body, "cmd")
    if (command is None) == (cmd is None):
        raise BadRequest(
            "send exactly one of command (a shell line) or cmd (a program, with args)", code="invalid_field"
        )
    args_value = body.get("args")
    if args_value is None:
        args: list[str] = []
    elif isinstance(args_value, list) and all(isinstance(a, str) and "\x00" not in a for a in args_value):
        args = list(args_value)
    else:
        raise BadRequest("args must be an array of strings", code="invalid_field")
    if command is not None:
        if args:
            raise BadRequest("args go with cmd, not with command", code="invalid_field")
        cmd, args = "/bin/bash", ["-l", "-c", command]
    assert cmd is not None
    user = _text(body, "user") or default_user
    if not _USER.fullmatch(user):
        raise BadRequest(f"user {user!r} is not a valid user name", code="invalid_field")
    return ExecRequest(
        cmd=cmd,
        args=args,
        envs=string_map_field(body, "envs", 256, _ENV_NAME),
        cwd=_text(body, "cwd"),
        user=user,
        timeout=int_field(body, "timeout", 60, 1, MAX_EXEC_TIMEOUT),
        tag=_text(body, "tag", 256),
        background=bool_field(body, "background", False),
    )


def parse_selector(args: dict[str, str]) -> dict[str, Any]:
    """`?pid=N` or `?tag=T`: the agent's ProcessSelector in its JSON form."""
    pid, tag = args.get("pid"), args.get("tag")
    if (pid is None) == (tag is None):
        raise BadRequest("name the process with exactly one of ?pid= or ?tag=", code="invalid_query")
    if pid is not None:
        if not (pid.isascii() and pid.isdigit() and 0 < len(pid) <= 10 and int(pid) < 2**32):
            raise BadRequest("pid must be a positive integer", code="invalid_query")
        return {"pid": int(pid)}
    assert tag is not None
    return {"tag": tag}


def parse_signal(raw: str | None) -> str:
    name = (raw or "SIGKILL").upper()
    if name in ("KILL", "TERM"):
        name = "SIG" + name
    if name not in ("SIGKILL", "SIGTERM"):
        raise BadRequest("signal must be SIGTERM or SIGKILL", code="invalid_query")
    return "SIGNAL_" + name
