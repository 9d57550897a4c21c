"""Who may go where: turn a route and what is known of the sandbox into a verdict. Pure.

The gateway never reads the database itself; it is handed a `SandboxView` (the state
and address the control plane recorded) and a token verifier, and answers with a
`Forward` or a `Refuse` carrying the status a user can act on:

    unknown host or sandbox       404
    missing or wrong token        401  (agent routes, and port routes to the agent port)
    sandbox not running           409  naming its status
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.routing.table import AgentRoute, ApiRoute, NoRoute, PortRoute, Route
from gateway.upstream import Address, TcpAddress

AGENT_PORT = 8888


@dataclass(frozen=True)
class SandboxView:
    state: str
    ip: str | None


@dataclass(frozen=True)
class Forward:
    address: Address
    # What to call the target in errors and logs: "the control plane", "port 3000 of sbx-…".
    target: str
    sandbox_id: str | None = None
    port: int | None = None


@dataclass(frozen=True)
class Refuse:
    status: int
    error: str
    message: str


Verdict = Forward | Refuse


def decide(
    route: Route,
    *,
    lookup: Callable[[str], SandboxView | None],
    access_token: str | None,
    verify: Callable[[str, str | None], bool],
    api_address: Address,
    agent_authorises: bool = False,
) -> Verdict:
    """`agent_authorises`: a request the agent checks itself (a signed file URL, a
    watcher capability), let through without X-Access-Token: signed URLs exist for
    clients that cannot set headers, and the agent knows the token.
    """
    match route:
        case ApiRoute():
            return Forward(api_address, "the control plane")
        case NoRoute(reason):
            return Refuse(404, "unknown_host", reason)
        case AgentRoute(sandbox_id):
            port, needs_token = AGENT_PORT, True
        case PortRoute(sandbox_id, port):
            # The agent trusts the gateway to check tokens, so `8888-<id>.D` must not
            # reach it without one.
            needs_token = port == AGENT_PORT
    sandbox = lookup(sandbox_id)
    if sandbox is None:
        return Refuse(404, "sandbox_not_found", f"sandbox {sandbox_id} does not exist")
    if needs_token and not agent_authorises and not verify(sandbox_id, access_token):
        why = "missing" if not access_token else "invalid"
        return Refuse(401, "unauthorized", f"{why} X-Access-Token for sandbox {sandbox_id}")
    if sandbox.state != "running" or not sandbox.ip:
        hint = " (resume it through the API)" if sandbox.state == "paused" else ""
        return Refuse(409, "sandbox_not_running", f"sandbox {sandbox_id} is {sandbox.state}{hint}")
    target = f"the agent of sandbox {sandbox_id}" if needs_token else f"port {port} of sandbox {sandbox_id}"
    return Forward(TcpAddress(sandbox.ip, port), target, sandbox_id, port)
