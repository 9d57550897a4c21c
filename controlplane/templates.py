"""Built-in templates. Templates are local images: nothing can be pulled on these machines.

A user-facing templates API is its own issue; for now the registry is this table.
"""

from __future__ import annotations

from dataclasses import dataclass

from controlplane.errors import NotFound
from controlplane.runtime.base import GVISOR, RUNC


@dataclass(frozen=True, kw_only=True)
class Template:
    id: str
    image: str
    # Run by the agent at boot, if any (a template's own service).
    start_cmd: str | None = None
    # The unprivileged account the template provides besides root.
    user: str = "user"
    # The runtime its sandboxes get unless a create names one (base.RUNTIMES).
    runtime: str = RUNC


BUILTIN: dict[str, Template] = {
    "base": Template(id="base", image="localhost/scalebox/base:latest"),
    # Python with numpy, pandas and matplotlib, bash and Node.js: the languages
    # the agent's ExecutionService runs. The official SDKs' code interpreter
    # (`from scalebox import Sandbox`) creates sandboxes from this template.
    "code-interpreter": Template(id="code-interpreter", image="localhost/scalebox/code-interpreter:latest"),
    # The base image under gVisor: for clients that cannot send `runtime` (the SDKs).
    "base-gvisor": Template(id="base-gvisor", image="localhost/scalebox/base:latest", runtime=GVISOR),
}


def resolve(name: str) -> Template:
    template = BUILTIN.get(name) or BUILTIN.get(name.removeprefix("tpl-"))
    if template is None:
        known = ", ".join(sorted(BUILTIN))
        raise NotFound(f"template {name!r} does not exist; available: {known}", code="template_not_found")
    return template
