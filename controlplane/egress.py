"""A sandbox's egress policy: where it may connect and which names it may resolve. Pure.

Set at create (`allow_internet_access`, and `network: {allow_out, deny_out}`) and
changeable later (`PUT /v1/sandboxes/{id}/network`). Each list holds CIDRs
(`10.1.0.0/16`, a bare address) and domain names (`pypi.org`; `*.example.com`
for any name below example.com, not example.com itself):

    allow_internet_access false     nothing at all: no connection, no name resolved
    allow_out empty                 everything, except what deny_out names
    allow_out given                 only what it names, except what deny_out names

deny_out wins over allow_out. Names are enforced where they can be: the sandbox's
resolver (the appliance's) answers only names the policy allows, so a denied name
cannot even be looked up (no DNS exfiltration when egress is denied), and a
connection is allowed by name only to the addresses that resolver handed out for
an allowed name. A bare IP counts only if a CIDR rule allows it (or nothing is
restricted). HTTP Host and TLS SNI are checked against the same rules.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from controlplane.errors import BadRequest

MAX_RULES = 256
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")

# As stored and sent: {"allow_out": [...], "deny_out": [...]} (EgressPolicy.to_json()).
EgressLists = dict[str, list[str]]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Rules:
    networks: tuple[Network, ...] = ()
    # Exact names, and wildcard suffixes stored without the "*." ("example.com").
    names: frozenset[str] = frozenset()
    suffixes: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.networks or self.names or self.suffixes)

    def has_names(self) -> bool:
        return bool(self.names or self.suffixes)

    def matches_name(self, name: str) -> bool:
        if name in self.names:
            return True
        # "*.example.com" covers every name below example.com, at any depth.
        parts = name.split(".")
        return any(".".join(parts[i:]) in self.suffixes for i in range(1, len(parts)))

    def matches_address(self, address: Address) -> bool:
        return any(address in net for net in self.networks)

    def entries(self) -> list[str]:
        return [str(n) for n in self.networks] + sorted(self.names) + sorted(f"*.{s}" for s in self.suffixes)


@dataclass(frozen=True)
class EgressPolicy:
    internet: bool = True
    allow: Rules = field(default_factory=Rules)
    deny: Rules = field(default_factory=Rules)

    @property
    def unrestricted(self) -> bool:
        """Everything goes: nothing to enforce beyond the network isolation of every sandbox."""
        return self.internet and not self.allow and not self.deny

    @property
    def default_allow(self) -> bool:
        return self.internet and not self.allow

    def name_allowed(self, name: str) -> bool:
        """Whether the resolver may answer for `name` (normalised: lowercase, no trailing dot)."""
        if not self.internet or self.deny.matches_name(name):
            return False
        return self.default_allow or self.allow.matches_name(name)

    def address_allowed(self, address: Address, *, resolved_for: Iterable[str] = ()) -> bool:
        """Whether a connection to `address` may leave; `resolved_for`: the names the
        sandbox's resolver answered with it (a name allowed by the rules lets it out)."""
        if not self.internet or self.deny.matches_address(address):
            return False
        if self.default_allow or self.allow.matches_address(address):
            return True
        return any(self.name_allowed(n) for n in resolved_for)

    def to_json(self) -> dict[str, Any]:
        return {"allow_out": self.allow.entries(), "deny_out": self.deny.entries()}


def normalise_name(value: str) -> str | None:
    """A DNS name in canonical form, or None when it is not one."""
    name = value.strip().lower().rstrip(".")
    if not name or len(name) > 253 or not name.isascii():
        return None
    if not all(_LABEL.fullmatch(label) for label in name.split(".")):
        return None
    return name


def parse_rules(value: Any, key: str) -> Rules:
    if value is None:
        return Rules()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"{key} must be a list of CIDRs and domain names", code="invalid_field")
    if len(value) > MAX_RULES:
        raise BadRequest(f"{key} holds {len(value)} entries; at most {MAX_RULES}", code="invalid_field")
    networks: list[Network] = []
    names: set[str] = set()
    suffixes: set[str] = set()
    for entry in value:
        text = entry.strip()
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
            continue
        except ValueError:
            pass
        wildcard = text.startswith("*.")
        name = normalise_name(text[2:] if wildcard else text)
        if name is None or name.replace(".", "").isdigit():
            raise BadRequest(
                f"{key}: {entry[:80]!r} is neither a CIDR (10.0.0.0/8, 1.2.3.4) nor a domain name "
                "(example.com, *.example.com)",
                code="invalid_field",
            )
        (suffixes if wildcard else names).add(name)
    return Rules(networks=tuple(networks), names=frozenset(names), suffixes=frozenset(suffixes))


def parse_network(value: Any) -> tuple[Rules, Rules]:
    """`network: {allow_out, deny_out}` from a request body (null: no rules)."""
    if value is None:
        return Rules(), Rules()
    if not isinstance(value, dict):
        raise BadRequest(
            'network must be an object like {"allow_out": ["pypi.org"], "deny_out": []}', code="invalid_field"
        )
    unknown = set(value) - {"allow_out", "deny_out"}
    if unknown:
        raise BadRequest(f"network: unknown field {sorted(unknown)[0]!r} (allow_out, deny_out)", code="invalid_field")
    return parse_rules(value.get("allow_out"), "network.allow_out"), parse_rules(
        value.get("deny_out"), "network.deny_out"
    )


def policy_of(internet: bool, stored: dict[str, Any] | None) -> EgressPolicy:
    """The policy from a sandbox row: its allow_internet_access and its stored `egress` lists."""
    allow, deny = parse_network(stored or None)
    return EgressPolicy(internet=internet, allow=allow, deny=deny)
