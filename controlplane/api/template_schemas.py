"""Request parsing and response shaping for the /v1/templates routes. Pure functions.

The published API names a template's settings two ways; both are accepted:
`cpu_count` or `default_cpu_count`, `memory_mb` or `default_memory_mb`,
`start_cmd` or `custom_command`, `ready_cmd` or `ready_command`; `ports` is a list
of port declarations (controlplane/ports.py) or that list as a JSON string.
An empty string clears start_cmd, ready_cmd or description on update.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controlplane.api.schemas import MIN_MEMORY_MB, HostLimits, int_field, iso, json_object
from controlplane.errors import BadRequest
from controlplane.ports import PortRequest, parse_ports
from controlplane.runtime.base import RUNTIMES
from controlplane.templates import Template, check_name

MAX_COMMAND = 4096
MAX_DESCRIPTION = 1024
_ALIASES = {
    "default_cpu_count": "cpu_count",
    "default_memory_mb": "memory_mb",
    "custom_command": "start_cmd",
    "ready_command": "ready_cmd",
}
_FIELDS = {"name", "description", "cpu_count", "memory_mb", "ports", "start_cmd", "ready_cmd", "runtime"}
# Sent by the hosted service's clients; meaningless here, so only their defaults are accepted.
_IGNORED_NULLS = {"visibility": "private", "is_public": False, "reset_ports": False}


@dataclass(frozen=True, kw_only=True)
class TemplateFields:
    """A template's settings as a request gives them; None: not given (keep, or inherit)."""

    name: str | None = None
    description: str | None = None
    cpu_count: int | None = None
    memory_mb: int | None = None
    ports: tuple[PortRequest, ...] | None = None
    # "": none.
    start_cmd: str | None = None
    ready_cmd: str | None = None
    runtime: str | None = None


def parse_fields(body: Any, limits: HostLimits, *, extra: frozenset[str] = frozenset()) -> TemplateFields:
    """The settings in a request body; `extra` names other fields the route reads itself."""
    body = json_object(body, "request body")
    fields: dict[str, Any] = {}
    for key, value in body.items():
        canonical = _ALIASES.get(key, key)
        if canonical in _IGNORED_NULLS:
            if value not in (None, _IGNORED_NULLS[canonical]):
                raise BadRequest(
                    f"{key}: templates on this appliance are private to their owner; omit it", code="unsupported"
                )
            continue
        if canonical not in _FIELDS and key not in extra:
            known = ", ".join(sorted(_FIELDS | set(extra)))
            raise BadRequest(f"unknown field {key[:64]!r}; a template takes {known}", code="invalid_field")
        if canonical in _FIELDS and value is not None:
            if canonical in fields:
                raise BadRequest(f"{key} repeats another name of {canonical}; send one", code="invalid_field")
            fields[canonical] = value
    name = fields.get("name")
    return TemplateFields(
        name=None if name is None else check_name(name),
        description=_text(fields, "description", MAX_DESCRIPTION),
        cpu_count=None if "cpu_count" not in fields else int_field(fields, "cpu_count", 0, 1, limits.max_cpu_count),
        memory_mb=None
        if "memory_mb" not in fields
        else int_field(fields, "memory_mb", 0, MIN_MEMORY_MB, limits.max_memory_mb),
        ports=_ports(fields.get("ports")),
        start_cmd=_text(fields, "start_cmd", MAX_COMMAND),
        ready_cmd=_text(fields, "ready_cmd", MAX_COMMAND),
        runtime=_runtime(fields.get("runtime")),
    )


def require_name(fields: TemplateFields) -> str:
    if fields.name is None:
        raise BadRequest("name is required: 1-64 lowercase letters, digits or '-'", code="invalid_field")
    return fields.name


def parse_archive_path(value: Any) -> Path:
    """`archive_path`: an image archive on the appliance's host."""
    if not isinstance(value, str) or not value.startswith("/") or "\x00" in value or len(value) > 4096:
        raise BadRequest("archive_path must be an absolute path on the appliance host", code="invalid_field")
    path = Path(value)
    if not path.exists():
        raise BadRequest(f"archive_path {value[:200]} does not exist on the appliance host", code="invalid_field")
    if not path.is_file():
        raise BadRequest(f"archive_path {value[:200]} is not a regular file", code="invalid_field")
    return path


def query_fields(args: dict[str, str]) -> dict[str, Any]:
    """An upload's settings, from its query string: numbers as numbers."""
    out: dict[str, Any] = dict(args)
    for key in ("cpu_count", "memory_mb", "default_cpu_count", "default_memory_mb"):
        raw = out.get(key)
        if raw is not None:
            if not (raw.isascii() and raw.isdigit() and len(raw) <= 9):
                raise BadRequest(f"query parameter {key} must be a whole number", code="invalid_query")
            out[key] = int(raw)
    if "ports" in out:
        out["ports"] = str(out["ports"])
    return out


def _text(fields: dict[str, Any], key: str, limit: int) -> str | None:
    value = fields.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit or "\x00" in value:
        raise BadRequest(f"{key} must be a string of at most {limit} characters, no NUL", code="invalid_field")
    return value


def _ports(value: Any) -> tuple[PortRequest, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        # The published API sends them as a JSON string.
        try:
            value = json.loads(value) if value.strip() else []
        except ValueError:
            raise BadRequest(
                "ports must be a list of {port, name, protocol, access} or that as JSON", code="invalid_field"
            ) from None
    ports = parse_ports(value, "ports")
    for i, p in enumerate(ports):
        # Every sandbox of the template declares it: one host port number cannot serve them all.
        if p.host_port not in (None, 0):
            raise BadRequest(
                f"ports[{i}].host_port: a template can ask for a host port (true), not a number", code="invalid_field"
            )
    return tuple(ports)


def _runtime(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and value in RUNTIMES):
        return value
    raise BadRequest(f"runtime must be one of {', '.join(RUNTIMES)}", code="invalid_field")


def template_json(t: Template) -> dict[str, Any]:
    ports = [{**p.stored(p.host_port), "host_port": p.host_port is not None} for p in t.ports]
    return {
        "template_id": t.id,
        "name": t.shown_name,
        "description": t.description,
        "image": t.image,
        "status": t.status,
        "build_status": t.status,
        "reason": t.reason,
        "source": t.source,
        "builtin": t.builtin,
        "owner_id": t.owner_id,
        "visibility": "public" if t.builtin else "private",
        "is_public": t.builtin,
        "runtime": t.runtime,
        "user": t.user,
        "start_cmd": t.start_cmd,
        "custom_command": t.start_cmd,
        "ready_cmd": t.ready_cmd,
        "ready_command": t.ready_cmd,
        "default_cpu_count": t.cpu_count,
        "default_memory_mb": t.memory_mb,
        "ports": ports,
        "created_at": iso(t.created_at),
        "updated_at": iso(t.updated_at),
    }
