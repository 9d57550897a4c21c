"""Which way into a sandbox: straight to its sandbox domain, or through the API.

Issue 7: in-sandbox operations go straight to `https://<sandbox_domain>/` with
the sandbox's token; the API is the fallback for when that domain cannot be
reached (no wildcard DNS, a firewall). The choice is made once per command by
connecting to the domain's `/health` before anything is run: only a failure to
connect (DNS, refused, timed out) selects the API, so a command is never sent
twice, and any answer at all (even an error status) means the domain works and
the real call will speak for itself.

`SCALEBOX_SANDBOX_ROUTE` overrides the choice:

    auto      (default) the sandbox domain, else the API when it cannot be reached
    direct    the sandbox domain only; failing to reach it is an error
    api       the API only (e.g. to test the fallback, or when the domain is known to be unreachable)
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import httpx

from cli.sandboxio.agent import AgentBackend
from cli.sandboxio.api import ApiBackend
from cli.sandboxio.errors import Unreachable
from cli.sandboxio.transport import Backend, SandboxRef

ROUTE_ENV = "SCALEBOX_SANDBOX_ROUTE"


class Route(enum.Enum):
    AUTO = "auto"
    DIRECT = "direct"
    API = "api"


def route_from_env(environ: Mapping[str, str]) -> Route:
    raw = environ.get(ROUTE_ENV, "").strip().lower() or Route.AUTO.value
    try:
        return Route(raw)
    except ValueError:
        choices = ", ".join(r.value for r in Route)
        raise ValueError(f"{ROUTE_ENV} must be one of {choices}, not {raw!r}") from None


def connect(
    ref: SandboxRef,
    route: Route,
    *,
    transport: httpx.BaseTransport | None = None,
    api_transport: httpx.BaseTransport | None = None,
) -> Backend:
    if route is Route.API:
        return ApiBackend(ref, transport=api_transport)
    direct = AgentBackend(ref, transport=transport)
    if route is Route.DIRECT:
        return direct
    try:
        direct.probe()
    except Unreachable:
        direct.close()
        return ApiBackend(ref, transport=api_transport)
    return direct
