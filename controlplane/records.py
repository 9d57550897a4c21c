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
    # The user who created it; only they see it (others get 404).
    owner_id: str = "usr-admin"
    # Its project (controlplane/projects.py); '' for rows from before projects.
    project_id: str = ""
    # Epoch seconds; None until the event happened.
    created_at: float
    updated_at: float
    started_at: float | None = None
    timeout_at: float | None = None
    paused_at: float | None = None
    ended_at: float | None = None


@dataclass(frozen=True, kw_only=True)
class ProjectRecord:
    id: str
    owner_id: str
    name: str
    description: str = ""
    # Every user has one, made with their first sandbox; it cannot be deleted.
    is_default: bool = False
    # Whether its sandboxes may connect to each other directly (the firewall's peers).
    sandboxes_connect: bool = False
    created_at: float
    updated_at: float


# The appliance's own admin (controlplane/users.py), made on first start.
ADMIN_USER_ID = "usr-admin"


@dataclass(frozen=True, kw_only=True)
class UserRecord:
    id: str
    name: str
    # "admin" (manages users) or "user".
    role: str
    created_at: float
    disabled_at: float | None = None


@dataclass(frozen=True, kw_only=True)
class ApiKeyRecord:
    id: str
    # The user it acts for (controlplane/users.py); keys from before users belong to the admin.
    user_id: str = "usr-admin"
    name: str
    secret_hash: bytes
    prefix: str
    created_at: float
    # None: never expires.
    expires_at: float | None = None
    # Set while disabled: refused, kept, can be enabled again.
    disabled_at: float | None = None
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
    # The user creating it (controlplane/users.py): its owner.
    owner_id: str = "usr-admin"
    # A project of theirs, by id; "" for their default project.
    project_id: str = ""
    # Fields the client left out ("cpu_count", "memory_mb"), given the API's defaults
    # above: a template's own defaults replace those (lifecycle/service.py).
    unset: frozenset[str] = frozenset()
