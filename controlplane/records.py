"""The control plane's own values: a sandbox as stored, and an API key as stored."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from controlplane.lifecycle.states import State
from controlplane.ports import PortRequest


@dataclass(frozen=True, kw_only=True)
class SandboxRecord:
    id: str
    template_id: str
    state: State
    reason: str | None = None
    container_id: str | None = None
    ip: str | None = None
    cpu_count: int
    memory_mb: int
    storage_gb: int
    timeout: int
    auto_pause: bool = False
    allow_internet_access: bool = True
    secure: bool = True
    is_async: bool = False
    name: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    env_vars: dict[str, str] = field(default_factory=dict)
    # Stored declarations (controlplane/ports.py).
    custom_ports: list[dict[str, Any]] = field(default_factory=list)
    # Live port tokens (controlplane/porttokens.py): they go with the row.
    port_tokens: list[dict[str, Any]] = field(default_factory=list)
    # The sandbox runtime it was created with (controlplane/runtime/base.py RUNTIMES).
    runtime: str = "runc"
    # The egress lists ({"allow_out": [...], "deny_out": [...]}, controlplane/egress.py);
    # with allow_internet_access, the sandbox's egress policy. Empty: no lists.
    egress: dict[str, list[str]] = field(default_factory=dict)
    # Epoch seconds; None until the event happened.
    created_at: float
    updated_at: float
    started_at: float | None = None
    timeout_at: float | None = None
    paused_at: float | None = None
    ended_at: float | None = None


@dataclass(frozen=True, kw_only=True)
class ApiKeyRecord:
    id: str
    name: str
    secret_hash: bytes
    prefix: str
    created_at: float
    revoked_at: float | None = None


@dataclass(frozen=True, kw_only=True)
class CreateRequest:
    template: str = "base"
    name: str | None = None
    timeout: int = 300
    cpu_count: int
    memory_mb: int
    storage_gb: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    env_vars: dict[str, str] = field(default_factory=dict)
    allow_internet_access: bool = True
    auto_pause: bool = False
    secure: bool = True
    is_async: bool = False
    custom_ports: list[PortRequest] = field(default_factory=list)
    # A runtime by name (base.RUNTIMES); None: the template's.
    runtime: str | None = None
    # Validated egress lists (controlplane/egress.py EgressPolicy.to_json()); empty: none.
    egress: dict[str, list[str]] = field(default_factory=dict)
