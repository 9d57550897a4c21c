"""Who may go where: turn a route and what is known of the sandbox into a verdict. Pure.

The gateway never reads the database itself; it is handed a `SandboxView` (the state
and address the control plane recorded) and a token verifier, and answers with a
`Forward`, a `Refuse` carrying the status a user can act on, or `Wake`:

    unknown host or sandbox       404
    missing or wrong token        401  (agent routes, port routes to the agent port, private ports)
    outside a port token's scope  401 expired, 403 method or path
    an HTTP request for a port
      declared tcp or tls         421  (those are reached by TLS with SNI: `decide_stream`)
    sandbox not running           409  naming its status; Wake when auto_pause put it to sleep
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from gateway.routing.table import AgentRoute, ApiRoute, NoRoute, PortRoute, Route
from gateway.upstream import Address, TcpAddress

AGENT_PORT = 8888


@dataclass(frozen=True)
class PortPolicy:
    """What a sandbox declared for one port (controlplane/ports.py): http, tcp or tls; private or not."""

    protocol: str = "http"
    private: bool = False


PUBLIC_HTTP = PortPolicy()


@dataclass(frozen=True)
class Grant:
    """What one port token allows: a port, and optionally a path prefix, methods and an end."""

    port: int
    path_prefix: str | None = None
    methods: frozenset[str] | None = None
    expires_at: float | None = None


@dataclass(frozen=True)
class SandboxView:
    state: str
    ip: str | None
    ports: Mapping[int, PortPolicy] = field(default_factory=dict)
    # Live port tokens by id.
    grants: Mapping[str, Grant] = field(default_factory=dict)
    # Paused by its timeout with auto_pause: traffic resumes it.
    wakeable: bool = False


@dataclass(frozen=True)
class Forward:
    address: Address
    # What to call the target in errors and logs: "the control plane", "port 3000 of sbx-…".
    target: str
    sandbox_id: str | None = None
    port: int | None = None
    # A private port: the gateway's credentials are taken off the request before it
    # goes on, and `grant` (None: the sandbox's own access token) limits each request.
    private: bool = False
    grant: Grant | None = None


@dataclass(frozen=True)
class Refuse:
    status: int
    error: str
    message: str


@dataclass(frozen=True)
class Wake:
    """The sandbox sleeps until traffic comes (auto_pause): resume it, then decide again."""

    sandbox_id: str


Verdict = Forward | Refuse | Wake


@dataclass(frozen=True)
class Stream:
    """A connection for a tcp or tls port: a byte stream to `address` after the ClientHello.
    `passthrough`: the client's TLS goes to the sandbox untouched (tls); else the gateway
    ends TLS and passes the plaintext (tcp)."""

    address: TcpAddress
    sandbox_id: str
    port: int
    passthrough: bool


StreamVerdict = Stream | Refuse | Wake | None


def decide(
    route: Route,
    *,
    lookup: Callable[[str], SandboxView | None],
    access_token: str | None,
    verify: Callable[[str, str | None], bool],
    api_address: Address,
    agent_authorises: bool = False,
    port_token_id: Callable[[str, str | None], str | None] = lambda _sid, _tok: None,
) -> Verdict:
    """`agent_authorises`: a request the agent checks itself (a signed file URL, a
    watcher capability), let through without X-Access-Token: signed URLs exist for
    clients that cannot set headers, and the agent knows the token.

    `port_token_id(sandbox_id, token)`: the id of a genuine port token of that sandbox
    (its signature checked), else None; whether it is still live is in the view.
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
    policy = PUBLIC_HTTP if needs_token else sandbox.ports.get(port, PUBLIC_HTTP)
    grant: Grant | None = None
    if policy.private and not verify(sandbox_id, access_token):
        token_id = port_token_id(sandbox_id, access_token)
        found = sandbox.grants.get(token_id) if token_id is not None else None
        if found is None or found.port != port:
            why = (
                "needs a token" if not access_token else "does not accept this token (wrong, revoked or another port's)"
            )
            return Refuse(
                401,
                "unauthorized",
                f"port {port} of sandbox {sandbox_id} is private and {why}: send it in X-Access-Token, "
                "or once as ?token= in a browser",
            )
        grant = found
    if policy.protocol != "http":
        return Refuse(
            421,
            "not_an_http_port",
            f"port {port} of sandbox {sandbox_id} is declared {policy.protocol}: open TLS to "
            f"{port}-{sandbox_id} on the gateway port (with SNI) and speak {policy.protocol} there",
        )
    if sandbox.state != "running" or not sandbox.ip:
        return _not_running(sandbox_id, sandbox)
    target = f"the agent of sandbox {sandbox_id}" if needs_token else f"port {port} of sandbox {sandbox_id}"
    return Forward(TcpAddress(sandbox.ip, port), target, sandbox_id, port, private=policy.private, grant=grant)


def _not_running(sandbox_id: str, sandbox: SandboxView) -> Refuse | Wake:
    if sandbox.wakeable and sandbox.state in ("paused", "resuming"):
        return Wake(sandbox_id)
    hint = " (resume it through the API)" if sandbox.state == "paused" else ""
    return Refuse(409, "sandbox_not_running", f"sandbox {sandbox_id} is {sandbox.state}{hint}")


def decide_stream(route: Route, *, lookup: Callable[[str], SandboxView | None]) -> StreamVerdict:
    """What a TLS connection whose SNI gives `route` is, before any HTTP: a stream for
    a port declared tcp or tls, else None (HTTP, which answers errors too)."""
    if not isinstance(route, PortRoute) or route.port == AGENT_PORT:
        return None
    sandbox = lookup(route.sandbox_id)
    if sandbox is None:
        return None
    policy = sandbox.ports.get(route.port, PUBLIC_HTTP)
    if policy.protocol == "http":
        return None
    if sandbox.state != "running" or not sandbox.ip:
        return _not_running(route.sandbox_id, sandbox)
    return Stream(TcpAddress(sandbox.ip, route.port), route.sandbox_id, route.port, policy.protocol == "tls")


def grant_refusal(grant: Grant | None, method: str, path: str, now: float) -> Refuse | None:
    """Whether one request falls outside a port token's scope (checked per request: the
    verdict that carries the grant is cached, time and path are not part of it)."""
    if grant is None:
        return None
    if grant.expires_at is not None and now >= grant.expires_at:
        return Refuse(401, "token_expired", "this port token has expired; ask for a new one")
    if grant.methods is not None and method not in grant.methods:
        allowed = ", ".join(sorted(grant.methods))
        return Refuse(403, "method_not_allowed_by_token", f"this port token allows only {allowed}")
    if grant.path_prefix is not None and not _under(path, grant.path_prefix):
        return Refuse(403, "path_not_allowed_by_token", f"this port token allows only paths under {grant.path_prefix}")
    return None


def _under(path: str, prefix: str) -> bool:
    """`path` is `prefix` or below it, compared by whole segments ("/api" covers
    "/api/x", not "/apix"); dot segments are refused rather than resolved."""
    segments = path.split("/")
    if ".." in segments or "." in segments or "%2e" in path.lower():
        return False
    if prefix.endswith("/"):
        return path.startswith(prefix)
    return path == prefix or path.startswith(prefix + "/")
