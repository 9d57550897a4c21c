"""The appliance's nftables rules as text, rendered from values: no I/O.

Sandboxes live on the appliance's own Podman bridge. Everything a sandbox sends
crosses one of three netfilter hooks, and one table per family, named after the
appliance instance, holds the rules for each:

    sandbox -> the host (any of its addresses)   inet   input    `from_sandbox`
    sandbox -> elsewhere, through the host        inet   forward  `egress`
    elsewhere -> a sandbox, through the host      inet   forward  `ingress`
    sandbox -> sandbox on the bridge              inet   forward  `between_sandboxes`
                                                  (br_netfilter hands bridged IPv4/IPv6
                                                  to the inet forward hook)
                                                  bridge forward  backstop, see below

The host's own connections into sandboxes (the gateway, health probes) leave
through the output hook, which no rule here touches; their replies come back as
`ct state established`. Everything else a sandbox starts towards the host is
refused except the public gateway port(s), as from the internet, and DNS to
aardvark-dns on the bridge gateway address. Refusals are rejects (TCP reset,
ICMP admin-prohibited), never silent drops: a refused connection fails at once.

Per sandbox there are two facts. Whether it may reach beyond the host
(`allow_internet_access`): the `online` set holds the addresses of those that may;
every other address, including a container that has just started and not yet
been classified (or a pooled one nobody has taken), has no egress and no DNS.
So a sandbox starts offline and is let out once its row says so. And its egress
lists (controlplane/egress.py), for an online sandbox that has any (`proxied`):

    TCP to anywhere outside the host   redirected to the egress proxy (in the
                                       appliance), which decides by address, TLS
                                       SNI and HTTP Host, and logs each connection
    DNS to anywhere                    redirected to the appliance's resolver, which
                                       answers only names the lists allow
    the rest (UDP, ICMP)               by the lists' CIDRs only: `deny_nets` refused;
                                       for one with an allow list (`allowlisted`),
                                       only `allow_nets` passes

Even online sandboxes never reach `blocked` destinations: the private, shared
and link-local ranges where the operator's own networks, the other container
networks of this host and cloud metadata services live.

The bridge-family table is a backstop for hosts without br_netfilter: it drops
(it cannot reject on such kernels) IPv4 between two addresses of the subnet,
after br_netfilter's hook (priority 0), so where br_netfilter runs, the inet
reject happens first.

Replacing a table is atomic: `table X` (creates it if missing), `delete table X`,
then the whole new table, in one `nft -f` transaction.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from controlplane.egress import policy_of
from controlplane.lifecycle.states import LIVE
from controlplane.records import SandboxRecord

# Destinations no sandbox may connect to, internet access or not: "this network",
# RFC 1918 and CGNAT (the operator's networks, this host's other container
# networks), loopback, link-local (cloud metadata at 169.254.169.254), multicast
# and the reserved range (with the limited broadcast address).
BLOCKED_DESTINATIONS: tuple[str, ...] = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
)

_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
# Linux interface names: at most 15 bytes; kept to characters nft takes unquoted too.
_INTERFACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
_FAMILIES = ("inet", "bridge")
_NEIGHBOUR_DISCOVERY = (
    "\t\t# IPv6 neighbour discovery (ARP's part; ARP is not IP and never reaches these hooks).",
    "\t\t# Without it a connection to a link-local address waits for a neighbour, unrefused.",
    "\t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept",
)


def _slug(instance_id: str) -> str:
    slug = "".join(c for c in instance_id if c.isascii() and c.isalnum())
    if not slug:
        raise ValueError(f"instance id {instance_id!r} has no letters or digits to name a network after")
    return slug


def network_name(instance_id: str) -> str:
    """The appliance's Podman network."""
    return f"scalebox-{_slug(instance_id)}"


def bridge_name(instance_id: str) -> str:
    """The host's bridge device for that network (15 bytes at most)."""
    return f"sbx{_slug(instance_id)[:12]}"


def table_name(instance_id: str) -> str:
    """The nftables tables (an inet and a bridge one) of this appliance."""
    return f"scalebox_{_slug(instance_id)}"


@dataclass(frozen=True, kw_only=True)
class FirewallSpec:
    """What the rules are made of, apart from the sandboxes. Validated: every value
    ends up in nft's input, so nothing but what is expected may get there."""

    table: str
    # The sandboxes' bridge device, its IPv4 subnet and the host's address on it
    # (where aardvark-dns answers).
    interface: str
    subnet: str
    gateway: str
    # The gateway's listening ports: reachable from sandboxes as from the internet.
    public_ports: tuple[int, ...]
    # Where the egress proxy listens, on the gateway address (controlplane/network/egressproxy.py).
    proxy_port: int = 15001
    blocked: tuple[str, ...] = BLOCKED_DESTINATIONS

    def __post_init__(self) -> None:
        if not _IDENTIFIER.fullmatch(self.table):
            raise ValueError(f"table name {self.table!r}: letters, digits and _, starting with a letter")
        if not _INTERFACE.fullmatch(self.interface):
            raise ValueError(f"interface name {self.interface!r}: 1-15 letters, digits, _ . -")
        subnet = ipaddress.IPv4Network(self.subnet)
        if ipaddress.IPv4Address(self.gateway) not in subnet:
            raise ValueError(f"gateway {self.gateway} is outside the subnet {self.subnet}")
        if not self.public_ports or not all(0 < p < 65536 for p in self.public_ports):
            raise ValueError(f"public ports must be 1-65535, at least one: {self.public_ports!r}")
        if not 0 < self.proxy_port < 65536 or self.proxy_port in self.public_ports or self.proxy_port == 53:
            raise ValueError(f"proxy port must be 1-65535, not 53 nor a public port: {self.proxy_port!r}")
        for cidr in self.blocked:
            ipaddress.IPv4Network(cidr)


def online_addresses(records: Iterable[SandboxRecord], subnet: str) -> frozenset[str]:
    """Addresses of the sandboxes that may reach beyond the host: live, on the
    subnet (one still on another network is not ours to filter), and allowed.

    A terminating sandbox is left out at once: its address is about to be free
    for the next container, which must not inherit its way out.
    """
    network = ipaddress.IPv4Network(subnet)
    out = set()
    for rec in records:
        if rec.state not in LIVE or not rec.allow_internet_access or not rec.ip:
            continue
        try:
            address = ipaddress.IPv4Address(rec.ip)
        except ValueError:
            continue
        if address in network:
            out.add(str(address))
    return frozenset(out)


@dataclass(frozen=True)
class EgressSets:
    """The per-sandbox egress facts nft enforces itself (see the module docstring)."""

    proxied: frozenset[str] = frozenset()
    allowlisted: frozenset[str] = frozenset()
    # (sandbox address, destination CIDR), IPv4 only: the sandboxes have no IPv6 beyond the bridge.
    allow_nets: frozenset[tuple[str, str]] = frozenset()
    deny_nets: frozenset[tuple[str, str]] = frozenset()


def egress_sets(records: Iterable[SandboxRecord], online: frozenset[str]) -> EgressSets:
    """The egress sets of the online sandboxes that have lists."""
    proxied, allowlisted = set(), set()
    allow_nets: set[tuple[str, str]] = set()
    deny_nets: set[tuple[str, str]] = set()
    for rec in records:
        if rec.ip not in online or not rec.egress or rec.state not in LIVE:
            continue
        policy = policy_of(True, rec.egress)
        if policy.unrestricted:
            continue
        address = str(ipaddress.IPv4Address(rec.ip))
        proxied.add(address)
        if policy.allow:
            allowlisted.add(address)
        for rules, out in ((policy.allow, allow_nets), (policy.deny, deny_nets)):
            v4 = [n for n in rules.networks if isinstance(n, ipaddress.IPv4Network)]
            # Collapsed: nft refuses overlapping intervals within one set.
            out.update((address, str(n)) for n in ipaddress.collapse_addresses(v4))
    return EgressSets(
        proxied=frozenset(proxied),
        allowlisted=frozenset(allowlisted),
        allow_nets=frozenset(allow_nets),
        deny_nets=frozenset(deny_nets),
    )


def _nets(pairs: Iterable[tuple[str, str]]) -> list[str]:
    """Sorted `sandbox . cidr` elements; a /32 is written as its address."""
    out = []
    for address, cidr in sorted(pairs, key=lambda p: (ipaddress.IPv4Address(p[0]), ipaddress.IPv4Network(p[1]))):
        net = ipaddress.IPv4Network(cidr)
        out.append(f"{ipaddress.IPv4Address(address)} . {net.network_address if net.prefixlen == 32 else net}")
    return out


def _addresses(values: Iterable[str]) -> list[str]:
    """Validated and sorted, so equal inputs render equal text."""
    return [str(a) for a in sorted({ipaddress.IPv4Address(v) for v in values})]


def _pairs(peers: Iterable[tuple[str, str]]) -> list[str]:
    both = {(ipaddress.IPv4Address(a), ipaddress.IPv4Address(b)) for pair in peers for a, b in (pair, pair[::-1])}
    return [f"{a} . {b}" for a, b in sorted(both)]


def _elements(values: list[str]) -> str:
    return "{ " + ", ".join(values) + " }"


def _set(name: str, type_: str, values: list[str], *, interval: bool = False, comment: str) -> list[str]:
    lines = [f"\t# {comment}", f"\tset {name} {{", f"\t\ttype {type_}"]
    if interval:
        lines.append("\t\tflags interval")
    if values:
        lines.append(f"\t\telements = {_elements(values)}")
    return [*lines, "\t}"]


def _egress_sets(egress: EgressSets) -> list[str]:
    return [
        *_set(
            "proxied",
            "ipv4_addr",
            _addresses(egress.proxied),
            comment="Online sandboxes with egress lists: their TCP and DNS go through the appliance.",
        ),
        *_set(
            "allowlisted",
            "ipv4_addr",
            _addresses(egress.allowlisted),
            comment="Those of them with an allow list: what it does not name is refused.",
        ),
        *_set(
            "allow_nets",
            "ipv4_addr . ipv4_addr",
            _nets(egress.allow_nets),
            interval=True,
            comment="sandbox . CIDR its allow list names (UDP, ICMP; TCP is the proxy's).",
        ),
        *_set(
            "deny_nets",
            "ipv4_addr . ipv4_addr",
            _nets(egress.deny_nets),
            interval=True,
            comment="sandbox . CIDR its deny list names.",
        ),
    ]


def render(
    spec: FirewallSpec,
    online: Iterable[str],
    peers: Iterable[tuple[str, str]] = (),
    egress: EgressSets = EgressSets(),
) -> str:
    """The whole ruleset: both tables replaced (created when missing) in one transaction.

    `peers`: pairs of sandbox addresses that may connect to each other directly
    (either way). Nothing passes any yet: the opt-in for sandboxes of one project
    comes with projects, and fills this.
    """
    iface = f'"{spec.interface}"'
    ports = _elements([str(p) for p in sorted(set(spec.public_ports))])
    peer_elements = _pairs(peers)
    inet = [
        f"table inet {spec.table} {{",
        *_set(
            "online",
            "ipv4_addr",
            _addresses(online),
            comment="Sandboxes allowed beyond the host (allow_internet_access); the rest have no egress.",
        ),
        *_set(
            "peers",
            "ipv4_addr . ipv4_addr",
            peer_elements,
            comment="Sandbox pairs that may connect directly (hook: the per-project opt-in; empty for now).",
        ),
        *_set(
            "blocked",
            "ipv4_addr",
            # Collapsed: nft refuses overlapping intervals.
            [str(n) for n in ipaddress.collapse_addresses(ipaddress.IPv4Network(c) for c in spec.blocked)],
            interval=True,
            comment="Never reached from a sandbox: private, shared and link-local ranges.",
        ),
        *_egress_sets(egress),
        "",
        "\t# Sandboxes with egress lists: DNS to the appliance's resolver wherever it was sent,",
        "\t# TCP leaving the host to the egress proxy (which connects on to the original address).",
        "\tchain divert {",
        "\t\ttype nat hook prerouting priority dstnat; policy accept;",
        f"\t\tiifname {iface} ip saddr @proxied fib daddr type != local jump divert_sandbox",
        "\t}",
        "",
        "\tchain divert_sandbox {",
        "\t\tudp dport 53 redirect to :53",
        "\t\ttcp dport 53 redirect to :53",
        "\t\tip daddr @blocked return",
        f"\t\tmeta l4proto tcp redirect to :{spec.proxy_port}",
        "\t}",
        "",
        "\tchain input {",
        "\t\ttype filter hook input priority filter - 10; policy accept;",
        f"\t\tiifname {iface} jump from_sandbox",
        "\t}",
        "",
        "\t# A sandbox towards any address of the host: the bridge gateway, the host's other",
        "\t# addresses, services bound to 0.0.0.0.",
        "\tchain from_sandbox {",
        "\t\t# Replies to the host's own connections: the gateway, health probes.",
        "\t\tct state established,related accept",
        *_NEIGHBOUR_DISCOVERY,
        "\t\t# The appliance's resolver (controlplane/network/resolver.py).",
        f"\t\tip saddr @online ip daddr {spec.gateway} udp dport 53 accept",
        f"\t\tip saddr @online ip daddr {spec.gateway} tcp dport 53 accept",
        "\t\t# The egress proxy, for connections diverted to it (never dialled directly).",
        f"\t\tip saddr @proxied ip daddr {spec.gateway} tcp dport {spec.proxy_port} ct status dnat accept",
        "\t\t# The public gateway port(s), as from the internet.",
        f"\t\tip saddr @online tcp dport {ports} accept",
        "\t\tgoto refuse",
        "\t}",
        "",
        "\tchain forward {",
        "\t\ttype filter hook forward priority filter - 10; policy accept;",
        f"\t\tiifname {iface} oifname {iface} jump between_sandboxes",
        f"\t\tiifname {iface} jump egress",
        f"\t\toifname {iface} jump ingress",
        "\t}",
        "",
        "\tchain between_sandboxes {",
        *_NEIGHBOUR_DISCOVERY,
        "\t\tip saddr . ip daddr @peers accept",
        "\t\tgoto refuse",
        "\t}",
        "",
        "\tchain egress {",
        "\t\t# The network is IPv4 only; link-local IPv6 goes nowhere.",
        "\t\tmeta nfproto ipv6 goto refuse",
        "\t\tip saddr != @online goto refuse",
        "\t\tip daddr @blocked goto refuse",
        "\t\tip saddr . ip daddr @deny_nets goto refuse",
        "\t\t# Their TCP is diverted to the proxy; this ends flows opened before the lists came.",
        "\t\tip saddr @proxied meta l4proto tcp goto refuse",
        "\t\tip saddr @allowlisted ip saddr . ip daddr != @allow_nets goto refuse",
        "\t}",
        "",
        "\t# Only replies come in: nothing outside the host opens connections to sandboxes.",
        "\tchain ingress {",
        "\t\tct state established,related accept",
        "\t\tgoto refuse",
        "\t}",
        "",
        "\tchain refuse {",
        "\t\tmeta l4proto tcp counter reject with tcp reset",
        "\t\tcounter reject with icmpx admin-prohibited",
        "\t}",
        "}",
    ]
    bridge = [
        f"table bridge {spec.table} {{",
        *_set("peers", "ipv4_addr . ipv4_addr", peer_elements, comment="As in the inet table."),
        "",
        "\t# Runs after br_netfilter (priority 0): it catches only what the inet table did not see.",
        "\tchain forward {",
        "\t\ttype filter hook forward priority 10; policy accept;",
        "\t\tip saddr . ip daddr @peers accept",
        f"\t\tip saddr {spec.subnet} ip daddr {spec.subnet} counter drop",
        "\t}",
        "}",
    ]
    header = [
        f"# ScaleBox appliance: sandboxes on {spec.interface} ({spec.subnet}). Written by `scalebox serve`;",
        "# replaced on every start, per-sandbox sets updated as sandboxes come and go.",
    ]
    replace = [line for family in _FAMILIES for line in _replace(family, spec.table)]
    return "\n".join([*header, *replace, *inet, *bridge]) + "\n"


def _replace(family: str, table: str) -> list[str]:
    # `table` on its own creates the table if it is missing, so `delete` cannot fail.
    return [f"table {family} {table}", f"delete table {family} {table}"]


def render_sandboxes(
    spec: FirewallSpec,
    online: Iterable[str],
    peers: Iterable[tuple[str, str]] = (),
    egress: EgressSets = EgressSets(),
) -> str:
    """The per-sandbox sets replaced in one transaction, the rest of the tables untouched."""
    lines = []
    for name, elements in (
        ("online", _addresses(online)),
        ("proxied", _addresses(egress.proxied)),
        ("allowlisted", _addresses(egress.allowlisted)),
        ("allow_nets", _nets(egress.allow_nets)),
        ("deny_nets", _nets(egress.deny_nets)),
    ):
        lines.append(f"flush set inet {spec.table} {name}")
        if elements:
            lines.append(f"add element inet {spec.table} {name} {_elements(elements)}")
    pairs = _pairs(peers)
    for family in _FAMILIES:
        lines.append(f"flush set {family} {spec.table} peers")
        if pairs:
            lines.append(f"add element {family} {spec.table} peers {_elements(pairs)}")
    return "\n".join(lines) + "\n"


def render_presence(table: str) -> str:
    """Succeeds (lists, changing nothing) only while both tables exist."""
    if not _IDENTIFIER.fullmatch(table):
        raise ValueError(f"table name {table!r}: letters, digits and _, starting with a letter")
    return "\n".join(f"list table {family} {table}" for family in _FAMILIES) + "\n"


def render_removal(table: str) -> str:
    """Both tables deleted; nothing to do (and no error) when they do not exist."""
    if not _IDENTIFIER.fullmatch(table):
        raise ValueError(f"table name {table!r}: letters, digits and _, starting with a letter")
    return "\n".join(line for family in _FAMILIES for line in _replace(family, table)) + "\n"
