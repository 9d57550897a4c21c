"""Templates: the images sandboxes start from, and how a name in a create finds one.

Two kinds, one type:

- built-ins (this table): owned by nobody, visible to everyone, read-only;
- a user's own (controlplane/templatestore.py): built from a Containerfile,
  committed from a sandbox or imported from an archive, visible to their owner
  only. Another user's template is as if it did not exist (404, never 403).

Templates are local images: nothing can be pulled on these machines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Protocol

from controlplane.errors import BadRequest, Conflict, NotFound
from controlplane.ports import PortRequest
from controlplane.records import CreateRequest
from controlplane.runtime.base import GVISOR, RUNC

# A user template's build status.
BUILDING = "building"
READY = "ready"
FAILED = "failed"
STATUSES = (BUILDING, READY, FAILED)
# Where a user template's image came from.
SOURCES = ("containerfile", "sandbox", "archive")

# Lowercase so that a name is also usable in a host label and an image name.
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,63}$")
# Where user templates' images live: one repository each, named by template id.
USER_IMAGE_PREFIX = "localhost/scalebox/user/"


@dataclass(frozen=True, kw_only=True)
class Template:
    id: str
    image: str
    # Shown and matched by creates; a built-in's name is its id.
    name: str = ""
    # Run by the agent at boot, if any (a template's own service).
    start_cmd: str | None = None
    # The unprivileged account the template provides besides root.
    user: str = "user"
    # The runtime its sandboxes get unless a create names one (base.RUNTIMES).
    runtime: str = RUNC
    # None: a built-in.
    owner_id: str | None = None
    status: str = READY
    # Why a build failed.
    reason: str | None = None
    # Defaults for creates that leave them out; None: the API's defaults.
    cpu_count: int | None = None
    memory_mb: int | None = None
    # Declared on every sandbox made from it (controlplane/ports.py).
    ports: tuple[PortRequest, ...] = ()
    # Run inside (/bin/sh -c) until it exits 0 before a create returns.
    ready_cmd: str | None = None
    description: str = ""
    source: str = "builtin"
    created_at: float | None = None
    updated_at: float | None = None

    @property
    def builtin(self) -> bool:
        return self.owner_id is None

    @property
    def shown_name(self) -> str:
        return self.name or self.id


BUILTIN: dict[str, Template] = {
    "base": Template(id="base", image="localhost/scalebox/base:latest"),
    # Python with numpy, pandas and matplotlib, bash and Node.js: the languages
    # the agent's ExecutionService runs. The official SDKs' code interpreter
    # (`from scalebox import Sandbox`) creates sandboxes from this template.
    "code-interpreter": Template(id="code-interpreter", image="localhost/scalebox/code-interpreter:latest"),
    # The base image under gVisor: for clients that cannot send `runtime` (the SDKs).
    "base-gvisor": Template(id="base-gvisor", image="localhost/scalebox/base:latest", runtime=GVISOR),
}


class TemplateLookup(Protocol):
    """The stored templates, as `resolve` needs them (templatestore.TemplateStore)."""

    def get(self, template_id: str) -> Template | None: ...

    def by_name(self, owner_id: str, name: str) -> Template | None: ...


def user_image(template_id: str) -> str:
    return f"{USER_IMAGE_PREFIX}{template_id}:latest"


def check_name(name: object, where: str = "name") -> str:
    """A user template's name: 1-64 lowercase letters, digits and '-', starting with a letter."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise BadRequest(
            f"{where} must be 1-64 lowercase letters, digits or '-', starting with a letter", code="invalid_field"
        )
    if name in BUILTIN or any(name == t.id for t in BUILTIN.values()):
        raise BadRequest(f"{where}: {name!r} is a built-in template's name; choose another", code="invalid_field")
    if name.startswith("tpl-"):
        raise BadRequest(
            f"{where}: names starting with 'tpl-' look like template ids; choose another", code="invalid_field"
        )
    return name


def find(ref: str, owner_id: str | None, lookup: TemplateLookup | None) -> Template | None:
    """The template `ref` (a built-in's name, or one of the owner's by id or name), any status.

    owner_id None: the appliance itself (the warm pool), which sees every template by id.
    """
    builtin = BUILTIN.get(ref) or BUILTIN.get(ref.removeprefix("tpl-"))
    if builtin is not None or lookup is None:
        return builtin
    stored = lookup.get(ref) if ref.startswith("tpl-") else None
    if stored is not None and owner_id is not None and stored.owner_id != owner_id:
        stored = None
    if stored is None and owner_id is not None:
        stored = lookup.by_name(owner_id, ref)
    return stored


def resolve(ref: str, owner_id: str | None = None, lookup: TemplateLookup | None = None) -> Template:
    """The template a sandbox can start from now: it exists, the owner may see it, it is ready."""
    template = find(ref, owner_id, lookup)
    if template is None:
        known = ", ".join(sorted(BUILTIN))
        raise NotFound(
            f"template {ref[:128]!r} does not exist; available: {known} and your own (GET /v1/templates)",
            code="template_not_found",
        )
    if template.status != READY:
        why = f": {template.reason}" if template.reason else ""
        raise Conflict(
            f"template {template.id} is {template.status}{why}; a sandbox needs a ready template "
            f"(see GET /v1/templates/{template.id}/status)",
            code="template_not_ready",
        )
    return template


def for_create(template: Template, req: CreateRequest) -> CreateRequest:
    """`req` as its template completes it: the template's cpu_count and memory_mb where the
    client left them out, and the template's ports declared before the request's own.

    A request declaring a port the template declares replaces that declaration (to make
    it private, say); a request port taking a template port's name is refused.
    """
    changes: dict[str, Any] = {}
    if "cpu_count" in req.unset and template.cpu_count is not None:
        changes["cpu_count"] = template.cpu_count
    if "memory_mb" in req.unset and template.memory_mb is not None:
        changes["memory_mb"] = template.memory_mb
    if template.ports:
        own = {p.port for p in req.custom_ports}
        inherited = [p for p in template.ports if p.port not in own]
        names = {p.name: p.port for p in inherited}
        for i, p in enumerate(req.custom_ports):
            if p.name in names:
                raise BadRequest(
                    f"custom_ports[{i}]: the name {p.name} is taken by port {names[p.name]} of template "
                    f"{template.shown_name}; choose another name",
                    code="invalid_field",
                )
        changes["custom_ports"] = [*inherited, *req.custom_ports]
    return replace(req, **changes) if changes else req
