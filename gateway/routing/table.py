"""The route table: which service a canonical host name addresses.

Pure: `route(host, domain)` takes two normalised names and returns one of the route
values below. With base domain D:

    api.D                  -> ApiRoute             (the control plane)
    <sandbox-id>.D         -> AgentRoute(id)       (the agent, container port 8888)
    <port>-<sandbox-id>.D  -> PortRoute(id, port)  (any container port)
    anything else          -> NoRoute(reason)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SANDBOX_ID = re.compile(r"^sbx-[a-z0-9]{4,40}$")
_PORT_PREFIX = re.compile(r"^([1-9][0-9]{0,4})-(.+)$")


@dataclass(frozen=True)
class ApiRoute:
    pass


@dataclass(frozen=True)
class AgentRoute:
    sandbox_id: str


@dataclass(frozen=True)
class PortRoute:
    sandbox_id: str
    port: int


@dataclass(frozen=True)
class NoRoute:
    reason: str


Route = ApiRoute | AgentRoute | PortRoute | NoRoute


def route(host: str, domain: str) -> Route:
    if host == f"api.{domain}":
        return ApiRoute()
    suffix = f".{domain}"
    if not host.endswith(suffix):
        return NoRoute(f"{host} is not under the sandbox domain {domain}")
    label = host[: -len(suffix)]
    if "." in label:
        return NoRoute(f"{host} has too many labels below {domain}")
    if SANDBOX_ID.fullmatch(label):
        return AgentRoute(label)
    m = _PORT_PREFIX.fullmatch(label)
    if m and SANDBOX_ID.fullmatch(m.group(2)):
        port = int(m.group(1))
        if port > 65535:
            return NoRoute(f"port {port} is out of range")
        return PortRoute(m.group(2), port)
    return NoRoute(f"{host} names no sandbox (expected <sandbox-id>.{domain} or <port>-<sandbox-id>.{domain})")
