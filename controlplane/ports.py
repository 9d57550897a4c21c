"""A sandbox's declared ports: what a declaration may say, and its stored shape. Pure.

A port is reached on `<port>-<sandbox-id>.<D>` through the gateway's one public
port. Its declaration says how:

    protocol  "http" (default)  HTTP and WebSocket, TLS ended at the gateway
              "tcp"             a raw byte stream: TLS ended at the gateway, chosen by SNI
              "tls"             TLS passthrough: the client's bytes untouched, chosen by SNI;
                                the service in the sandbox holds its own certificate
    access    "public" (default) or "private": a private port needs a token (http only,
              since a token travels in a header, a query parameter or a cookie)
    host_port true, or a number from the appliance's host port range: also forward
              that host port, as plain TCP, to the container port (tcp and tls only;
              an http port would lose its access checks and the gateway's limits)

Undeclared ports stay reachable as public http, as before ports were declared.
The published API's enum for `protocol` is TCP/UDP; its "TCP" meant the port
served on the sandbox domain, which is "http" here, and UDP is refused.

Stored form (the `custom_ports` column, a JSON list): {port, name, protocol,
access, host_port}, host_port an int once allocated, else None.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from controlplane.errors import BadRequest

AGENT_PORT = 8888
PROTOCOLS = ("http", "tcp", "tls")
ACCESS = ("public", "private")
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")


@dataclass(frozen=True, kw_only=True)
class PortRequest:
    """A validated declaration. `host_port`: None (no), 0 (allocate one) or the port wanted."""

    port: int
    name: str
    protocol: str
    access: str
    host_port: int | None

    def stored(self, host_port: int | None) -> dict[str, Any]:
        return {
            "port": self.port,
            "name": self.name,
            "protocol": self.protocol,
            "access": self.access,
            "host_port": host_port,
        }


def _int(item: dict[str, Any], key: str, where: str, low: int, high: int) -> int | None:
    value = item.get(key)
    if value is None:
        return None
    # JSON has one number type: 3000.0 is 3000; true is not a number here.
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{where}.{key} must be an integer from {low} to {high}", code="invalid_field")
    return value


def parse_port(value: Any, where: str) -> PortRequest:
    """One declaration from a request body; `where` names it in errors."""
    if not isinstance(value, dict):
        raise BadRequest(f'{where} must be an object like {{"port": 3000, "name": "web"}}', code="invalid_field")
    port = _int(value, "port", where, 1, 65535)
    if port is None:
        raise BadRequest(f"{where}.port is required", code="invalid_field")
    if port == AGENT_PORT:
        raise BadRequest(f"{where}.port: {AGENT_PORT} is the sandbox agent's port", code="invalid_field")
    service_port = _int(value, "service_port", where, 1, 65535)
    if service_port not in (None, port):
        raise BadRequest(f"{where}.service_port must equal port (or be left out)", code="invalid_field")
    name = value.get("name")
    if name is None:
        name = f"port-{port}"
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise BadRequest(
            f"{where}.name must be 1-15 lowercase letters, digits or '-', not starting or ending with '-'",
            code="invalid_field",
        )
    protocol = _protocol(value.get("protocol"), where)
    access = value.get("access")
    if access is None:
        access = "public"
    if access not in ACCESS:
        raise BadRequest(f"{where}.access must be one of {', '.join(ACCESS)}", code="invalid_field")
    if access == "private" and protocol != "http":
        raise BadRequest(
            f"{where}: a private port must be http: its token travels in a header, query or cookie, "
            f"which a raw {protocol} stream has no room for",
            code="invalid_field",
        )
    return PortRequest(
        port=port, name=name, protocol=protocol, access=access, host_port=_host_port(value, protocol, where)
    )


def _protocol(value: Any, where: str) -> str:
    if value is None or value == "TCP":
        return "http"
    if value == "UDP":
        raise BadRequest(f"{where}.protocol: UDP is not supported by this appliance", code="unsupported")
    if value not in PROTOCOLS:
        raise BadRequest(f"{where}.protocol must be one of {', '.join(PROTOCOLS)}", code="invalid_field")
    return str(value)


def _host_port(item: dict[str, Any], protocol: str, where: str) -> int | None:
    value = item.get("host_port")
    if value is None or value is False:
        return None
    if protocol == "http":
        raise BadRequest(
            f"{where}.host_port is for tcp and tls ports; declare the port with protocol tcp", code="invalid_field"
        )
    if value is True:
        return 0
    wanted = _int(item, "host_port", where, 1, 65535)
    assert wanted is not None
    return wanted


def parse_ports(value: Any, key: str = "custom_ports") -> list[PortRequest]:
    """A list of declarations, with unique ports and names."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest(f"{key} must be an array of {{port, name, protocol, access}}", code="invalid_field")
    ports: list[PortRequest] = []
    for i, item in enumerate(value):
        port = parse_port(item, f"{key}[{i}]")
        clash = conflict(port, [p.stored(p.host_port) for p in ports])
        if clash:
            raise BadRequest(f"{key}[{i}]: {clash}", code="invalid_field")
        ports.append(port)
    return ports


def conflict(port: PortRequest, existing: list[dict[str, Any]]) -> str | None:
    """Why `port` cannot join `existing` (stored declarations), or None."""
    for other in existing:
        if other["port"] == port.port:
            return f"port {port.port} is already declared (as {other['name']})"
        if other["name"] == port.name:
            return f"the name {port.name} is already used by port {other['port']}"
    return None


def normalise(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored declaration in today's shape (rows written before protocols and access existed)."""
    protocol = stored.get("protocol")
    return {
        "port": stored["port"],
        "name": stored.get("name") or f"port-{stored['port']}",
        "protocol": protocol if protocol in PROTOCOLS else "http",
        "access": stored.get("access") if stored.get("access") in ACCESS else "public",
        "host_port": stored.get("host_port"),
    }


def allocate_host_port(wanted: int, used: set[int], span: tuple[int, int] | None) -> int:
    """The host port to give a declaration asking for `wanted` (0: any free one)."""
    if span is None:
        raise BadRequest("host ports are switched off on this appliance (see --host-ports)", code="unsupported")
    low, high = span
    if wanted:
        if not low <= wanted <= high:
            raise BadRequest(f"host_port must be in this appliance's range {low}-{high}", code="invalid_field")
        if wanted in used:
            raise BadRequest(f"host port {wanted} is taken by another sandbox", code="host_port_taken")
        return wanted
    for candidate in range(low, high + 1):
        if candidate not in used:
            return candidate
    raise BadRequest(f"every host port in {low}-{high} is taken", code="host_ports_exhausted")


def declare(requests: Sequence[PortRequest], used: set[int], span: tuple[int, int] | None) -> list[dict[str, Any]]:
    """Stored declarations for `requests`, each host port allocated around those `used`."""
    taken = set(used)
    out: list[dict[str, Any]] = []
    for r in requests:
        host_port = None
        if r.host_port is not None:
            host_port = allocate_host_port(r.host_port, taken, span)
            taken.add(host_port)
        out.append(r.stored(host_port))
    return out


def port_json(stored: dict[str, Any], *, sandbox_id: str, domain: str, port_suffix: str) -> dict[str, Any]:
    """A declaration as the API shows it, with where to reach it."""
    p = normalise(stored)
    address = f"{p['port']}-{sandbox_id}.{domain}"
    out = {**p, "address": f"{address}{port_suffix}"}
    out["url"] = f"https://{address}{port_suffix}/" if p["protocol"] == "http" else None
    out["host_address"] = f"{domain}:{p['host_port']}" if p["host_port"] else None
    return out
