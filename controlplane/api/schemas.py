"""Request parsing and response shaping for the /v1 sandbox routes. Pure functions.

Requests arrive as already-decoded JSON values of unknown shape; each parser either
returns a frozen, validated value or raises BadRequest naming the field and what to
send instead. Explicit `null` always means "use the default", as the SDKs send it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, unquote

from controlplane.egress import EgressPolicy, parse_network, parse_rules, policy_of
from controlplane.errors import BadRequest
from controlplane.lifecycle.states import State, sdk_status
from controlplane.ports import normalise, parse_ports
from controlplane.records import CreateRequest, SandboxRecord
from controlplane.runtime.base import RUNTIMES

MIN_TIMEOUT = 1
MAX_TIMEOUT = 86_400
DEFAULT_TIMEOUT = 300
MIN_MEMORY_MB = 128
MAX_METADATA_ITEMS = 64
MAX_ENV_VARS = 256
MAX_STRING = 4096
# The agent reads its own settings from SCALEBOX_* variables.
RESERVED_ENV_PREFIX = "SCALEBOX_"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True, kw_only=True)
class HostLimits:
    """What this machine can give one sandbox; requests beyond it are refused."""

    max_cpu_count: int
    max_memory_mb: int
    max_storage_gb: int = 1024
    default_cpu_count: int = 1
    default_memory_mb: int = 512


# Fields the hosted service accepts that need infrastructure an appliance does not
# have; a null is fine, a value is refused rather than silently ignored.
_UNSUPPORTED = ("object_storage", "net_proxy_country", "locality", "s3fs_executable_path")


def json_object(body: Any, what: str) -> dict[str, Any]:
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise BadRequest(f"{what} must be a JSON object", code="invalid_body")
    return body


def int_field(body: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = body.get(key)
    if value is None:
        return default
    # bool is an int in Python; JSON true is not a number of seconds.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{key} must be an integer, got {type(value).__name__}", code="invalid_field")
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise BadRequest(f"{key} must be a whole number", code="invalid_field")
        value = int(value)
    if not lo <= value <= hi:
        raise BadRequest(f"{key} must be between {lo} and {hi}, got {value}", code="out_of_range")
    return value


def bool_field(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(f"{key} must be true or false", code="invalid_field")
    return value


def _str(body: dict[str, Any], key: str, default: str | None) -> str | None:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, str) or not value or len(value) > 256 or "\x00" in value:
        raise BadRequest(f"{key} must be a non-empty string of at most 256 characters", code="invalid_field")
    return value


def string_map_field(body: dict[str, Any], key: str, limit: int, name_re: re.Pattern[str] | None) -> dict[str, str]:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{key} must be an object of string values", code="invalid_field")
    if len(value) > limit:
        raise BadRequest(f"{key} may hold at most {limit} entries", code="invalid_field")
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(v, str):
            raise BadRequest(f"{key}.{k} must be a string, got {type(v).__name__}", code="invalid_field")
        if not k or len(k) > 256 or len(v) > MAX_STRING or "\x00" in k or "\x00" in v:
            raise BadRequest(
                f"{key}.{k!s:.40}: keys must be 1-256 characters, values at most {MAX_STRING}, no NUL",
                code="invalid_field",
            )
        if name_re is not None and not name_re.fullmatch(k):
            raise BadRequest(f"{key}: {k!r} is not a valid variable name", code="invalid_field")
        if name_re is not None and k.upper().startswith(RESERVED_ENV_PREFIX):
            raise BadRequest(f"{key}: names starting with {RESERVED_ENV_PREFIX} are reserved", code="invalid_field")
        out[k] = v
    return out


def parse_create(body: Any, limits: HostLimits) -> CreateRequest:
    body = json_object(body, "request body")
    for key in _UNSUPPORTED:
        if body.get(key) not in (None, [], {}):
            raise BadRequest(f"{key} is not supported by this appliance; omit it or send null", code="unsupported")
    template = body.get("template")
    if template is None:
        template = body.get("template_id")
    if template is None:
        template = "base"
    if not isinstance(template, str) or not template or len(template) > 128:
        raise BadRequest("template must be a template name or id", code="invalid_field")
    return CreateRequest(
        template=template,
        name=_str(body, "name", None),
        timeout=int_field(body, "timeout", DEFAULT_TIMEOUT, MIN_TIMEOUT, MAX_TIMEOUT),
        cpu_count=int_field(body, "cpu_count", limits.default_cpu_count, 1, limits.max_cpu_count),
        memory_mb=int_field(body, "memory_mb", limits.default_memory_mb, MIN_MEMORY_MB, limits.max_memory_mb),
        storage_gb=int_field(body, "storage_gb", 0, 0, limits.max_storage_gb),
        metadata=string_map_field(body, "metadata", MAX_METADATA_ITEMS, None),
        env_vars=string_map_field(body, "env_vars", MAX_ENV_VARS, _ENV_NAME),
        allow_internet_access=bool_field(body, "allow_internet_access", True),
        auto_pause=bool_field(body, "auto_pause", False),
        secure=bool_field(body, "secure", True),
        is_async=bool_field(body, "is_async", False),
        custom_ports=parse_ports(body.get("custom_ports")),
        runtime=_runtime(body),
        egress=_egress(body),
        project_id=_project_ref(body),
        unset=frozenset(k for k in ("cpu_count", "memory_mb") if body.get(k) is None),
    )


def _project_ref(body: dict[str, Any]) -> str:
    """`project_id`: a project of the caller's by id or name ("" or null: their default)."""
    value = body.get("project_id")
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > 128:
        raise BadRequest("project_id must be a project's id or name", code="invalid_field")
    return value


def _egress(body: dict[str, Any]) -> dict[str, list[str]]:
    """`network: {allow_out, deny_out}` at create, stored in canonical form ({} when none)."""
    allow, deny = parse_network(body.get("network"))
    policy = EgressPolicy(allow=allow, deny=deny)
    return policy.to_json() if allow or deny else {}


@dataclass(frozen=True, kw_only=True)
class NetworkUpdate:
    allow_internet_access: bool | None
    egress: dict[str, list[str]]


def parse_network_update(body: Any) -> NetworkUpdate:
    """`PUT /v1/sandboxes/{id}/network`: {allow_internet_access?, allow_out?, deny_out?}.

    The lists are replaced whole (one left out is emptied); allow_internet_access is
    changed only when given.
    """
    body = json_object(body, "request body")
    unknown = set(body) - {"allow_internet_access", "allow_out", "deny_out"}
    if unknown:
        raise BadRequest(
            f"unknown field {sorted(unknown)[0]!r}; send allow_internet_access, allow_out, deny_out",
            code="invalid_field",
        )
    internet = body.get("allow_internet_access")
    if internet is not None and not isinstance(internet, bool):
        raise BadRequest("allow_internet_access must be true or false", code="invalid_field")
    allow = parse_rules(body.get("allow_out"), "allow_out")
    deny = parse_rules(body.get("deny_out"), "deny_out")
    egress = EgressPolicy(allow=allow, deny=deny).to_json() if allow or deny else {}
    return NetworkUpdate(allow_internet_access=internet, egress=egress)


def network_json(rec: SandboxRecord) -> dict[str, Any]:
    policy = policy_of(rec.allow_internet_access, rec.egress)
    return {"allow_internet_access": rec.allow_internet_access, **policy.to_json()}


def _runtime(body: dict[str, Any]) -> str | None:
    """`runtime`: a name from RUNTIMES, or null for the template's. Whether this machine
    has it installed is the lifecycle service's to say (503 runtime_unavailable)."""
    value = body.get("runtime")
    if value is None or (isinstance(value, str) and value in RUNTIMES):
        return value
    shown = repr(value)[:40] if isinstance(value, str) else type(value).__name__
    raise BadRequest(
        f"runtime must be one of {', '.join(RUNTIMES)}, or null for the template's; got {shown}",
        code="invalid_field",
    )


def parse_timeout(body: Any) -> int:
    body = json_object(body, "request body")
    if body.get("timeout") is None:
        raise BadRequest("timeout is required (seconds, 1 to 86400)", code="invalid_field")
    return int_field(body, "timeout", 0, MIN_TIMEOUT, MAX_TIMEOUT)


def parse_optional_timeout(body: Any) -> int | None:
    body = json_object(body, "request body")
    if body.get("timeout") is None:
        return None
    return int_field(body, "timeout", 0, MIN_TIMEOUT, MAX_TIMEOUT)


def parse_is_async(body: Any) -> bool:
    return bool_field(json_object(body, "request body"), "is_async", False)


@dataclass(frozen=True, kw_only=True)
class Page:
    page: int
    limit: int
    offset: int


def _query_int(args: dict[str, str], keys: tuple[str, ...], default: int, lo: int, hi: int) -> int:
    for key in keys:
        raw = args.get(key)
        if raw is None or raw == "":
            continue
        # isascii: isdigit() also accepts "²", which int() refuses; the length bound
        # keeps int() away from its 4300-digit ValueError.
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 18) or not lo <= int(raw) <= hi:
            raise BadRequest(f"query parameter {key} must be an integer from {lo} to {hi}", code="invalid_query")
        return int(raw)
    return default


def parse_page(args: dict[str, str]) -> Page:
    limit = _query_int(args, ("limit", "page_size"), 100, 1, 1000)
    page = _query_int(args, ("page",), 1, 1, 1_000_000)
    offset = _query_int(args, ("offset", "skip"), (page - 1) * limit, 0, 10**9)
    # With an explicit offset the page is derived from it, as the hosted API does.
    return Page(page=offset // limit + 1, limit=limit, offset=offset)


def parse_states(raw: str | None) -> frozenset[State] | None:
    """`status=running,paused`; none given means every state but terminated."""
    if not raw:
        return frozenset(State) - {State.TERMINATED}
    states = set()
    for part in raw.split(","):
        try:
            states.add(State(part.strip()))
        except ValueError:
            names = ", ".join(s.value for s in State)
            raise BadRequest(f"unknown status {part!r}; use one of {names}", code="invalid_query") from None
    return frozenset(states)


def parse_metadata_filter(raw: str | None) -> dict[str, str] | None:
    """`metadata=k%3Dv%26k2%3Dv2` as the SDK sends it: a form-encoded map, once more encoded."""
    if not raw:
        return None
    try:
        pairs = parse_qsl(raw, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise BadRequest("metadata filter must be key=value pairs joined by &", code="invalid_query") from None
    # The SDKs quote each key and value before form-encoding the map.
    return {unquote(k): unquote(v) for k, v in pairs}


# Times a query may name: answers render them back as dates (iso()), which stop at the year
# 9999; a year's margin leaves room for rounding to hours and months.
_LATEST_TIME = datetime(9999, 1, 1, tzinfo=UTC).timestamp()


def parse_time(raw: str | None, what: str) -> float | None:
    """Epoch milliseconds or ISO 8601, to epoch seconds, from 1970 to the year 9999."""
    if raw is None or raw == "":
        return None
    if raw.isascii() and raw.isdigit():
        if len(raw) > 15:
            raise BadRequest(f"{what} is too far in the future", code="invalid_query")
        seconds = int(raw) / 1000
    else:
        try:
            parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise BadRequest(f"{what} must be epoch milliseconds or an ISO 8601 time", code="invalid_query") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        seconds = parsed.timestamp()
    if not 0 <= seconds < _LATEST_TIME:
        raise BadRequest(f"{what} must be a time from 1970 to the year 9999", code="invalid_query")
    return seconds


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, kw_only=True)
class Exposure:
    """How a sandbox is reached from outside: needed to render its domain and token."""

    domain: str
    public_port: int | None
    access_token: str


def sandbox_json(rec: SandboxRecord, exposure: Exposure, now: float) -> dict[str, Any]:
    port = f":{exposure.public_port}" if exposure.public_port not in (None, 443) else ""
    running_since = rec.started_at if rec.state is not State.TERMINATED else None
    uptime = int(now - running_since) if running_since and rec.state in (State.RUNNING,) else 0
    remaining = max(0, int(rec.timeout_at - now)) if rec.timeout_at and rec.state is State.RUNNING else None
    return {
        "sandbox_id": rec.id,
        "name": rec.name or rec.id,
        "template_id": rec.template_id,
        "template_name": rec.template_id,
        # The Python SDK parses only running/paused/terminated here; `state` is exact.
        "status": sdk_status(rec.state),
        "state": rec.state.value,
        "reason": rec.reason,
        "cpu_count": rec.cpu_count,
        "memory_mb": rec.memory_mb,
        "storage_gb": rec.storage_gb,
        "timeout": rec.timeout,
        "secure": rec.secure,
        "runtime": rec.runtime,
        "allow_internet_access": rec.allow_internet_access,
        "network": network_json(rec),
        "project_id": rec.project_id or None,
        "owner_id": rec.owner_id,
        "auto_pause": rec.auto_pause,
        "metadata": rec.metadata,
        "env_vars": rec.env_vars,
        "custom_ports": [normalise(p) for p in rec.custom_ports],
        "ports": [normalise(p) for p in rec.custom_ports],
        "created_at": iso(rec.created_at),
        "updated_at": iso(rec.updated_at),
        "started_at": iso(rec.started_at),
        "timeout_at": iso(rec.timeout_at),
        "paused_at": iso(rec.paused_at),
        "ended_at": iso(rec.ended_at),
        "uptime": uptime,
        "remaining_seconds": remaining,
        "sandbox_domain": f"{rec.id}.{exposure.domain}{port}",
        "envd_access_token": exposure.access_token,
        "envd_version": "0.1.0",
        "resources": {"cpu": rec.cpu_count, "memory": rec.memory_mb, "storage": rec.storage_gb},
    }


def status_json(rec: SandboxRecord) -> dict[str, Any]:
    return {
        "sandbox_id": rec.id,
        "status": rec.state.value,
        "substatus": None,
        "reason": rec.reason,
        "updated_at": iso(rec.updated_at),
    }


def pagination_json(page: Page, total: int) -> dict[str, int]:
    return {
        "page": page.page,
        "limit": page.limit,
        "total": total,
        "total_pages": math.ceil(total / page.limit),
        "offset": page.offset,
    }
