"""The pure nftables rendering (controlplane/network/ruleset.py), and `nft --check` of its output."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import replace
from typing import Any

import pytest

from controlplane.lifecycle.states import State
from controlplane.network.ruleset import (
    BLOCKED_DESTINATIONS,
    EgressSets,
    FirewallSpec,
    bridge_name,
    egress_sets,
    network_name,
    online_addresses,
    render,
    render_presence,
    render_removal,
    render_sandboxes,
    table_name,
)
from controlplane.records import SandboxRecord

SPEC = FirewallSpec(
    table="scalebox_abc123",
    interface="sbxabc123",
    subnet="10.89.7.0/24",
    gateway="10.89.7.1",
    public_ports=(8443, 443, 8443),
)

ND = "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept"


def record(n: int, **changes: Any) -> SandboxRecord:
    fields: dict[str, Any] = {
        "id": f"sbx-{n}",
        "template_id": "base",
        "state": State.RUNNING,
        "ip": f"10.89.7.{n}",
        "cpu_count": 1,
        "memory_mb": 512,
        "storage_gb": 0,
        "timeout": 300,
        "created_at": 0.0,
        "updated_at": 0.0,
    }
    fields.update(changes)
    return SandboxRecord(**fields)


def chain(text: str, family: str, name: str) -> list[str]:
    """The rule lines of one chain of one table (comments dropped)."""
    table = text[text.index(f"table {family} {SPEC.table} {{") :]
    body = table[table.index(f"\tchain {name} {{") :]
    body = body[: body.index("\n\t}")]
    return [line.strip() for line in body.splitlines()[1:] if line.strip() and not line.strip().startswith("#")]


# -- names ------------------------------------------------------------------------------------


def test_names_fit_nft_and_linux() -> None:
    assert network_name("s2f9bswyg2hz") == "scalebox-s2f9bswyg2hz"
    assert bridge_name("s2f9bswyg2hz") == "sbxs2f9bswyg2hz"
    assert table_name("s2f9bswyg2hz") == "scalebox_s2f9bswyg2hz"
    # An interface name holds 15 bytes; odd characters never reach nft.
    assert bridge_name("a-very-long-instance-id!") == "sbxaverylongins"
    assert table_name("ab-c'd") == "scalebox_abcd"
    with pytest.raises(ValueError):
        table_name("--")


@pytest.mark.parametrize(
    "changes",
    [
        {"table": "1abc"},
        {"table": 'x" ; flush ruleset'},
        {"interface": 'sbx" accept'},
        {"interface": "sixteen-chars-xx"},
        {"subnet": "10.89.7.1/24"},
        {"subnet": "fd00::/64"},
        {"gateway": "10.89.8.1"},
        {"public_ports": ()},
        {"public_ports": (0,)},
        {"public_ports": (70000,)},
        {"blocked": ("10.0.0.0/33",)},
    ],
)
def test_spec_refuses_what_must_not_reach_nft(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        replace(SPEC, **changes)


# -- which sandboxes are online ---------------------------------------------------------------


def test_online_addresses_are_live_allowed_sandboxes_on_the_subnet() -> None:
    records = [
        record(2),
        record(3, allow_internet_access=False),
        record(4, state=State.PAUSED),
        record(5, state=State.STARTING),
        record(6, state=State.TERMINATING),
        record(7, state=State.TERMINATED),
        record(8, state=State.FAILED),
        record(9, ip=None),
        record(10, ip="10.88.0.10"),  # still on Podman's default network
        record(11, ip="not an address"),
    ]
    assert online_addresses(records, SPEC.subnet) == {"10.89.7.2", "10.89.7.4", "10.89.7.5"}


# -- the ruleset ------------------------------------------------------------------------------


def test_render_replaces_both_tables_in_one_go() -> None:
    text = render(SPEC, [])
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    # Each table is created if missing, deleted, then defined anew: one transaction.
    assert lines[:4] == [
        f"table inet {SPEC.table}",
        f"delete table inet {SPEC.table}",
        f"table bridge {SPEC.table}",
        f"delete table bridge {SPEC.table}",
    ]
    assert lines[4] == f"table inet {SPEC.table} {{"
    assert f"table bridge {SPEC.table} {{" in lines


def test_sandbox_to_host_allows_replies_dns_and_the_public_ports_only() -> None:
    text = render(SPEC, [])
    assert chain(text, "inet", "input") == [
        "type filter hook input priority filter - 10; policy accept;",
        'iifname "sbxabc123" jump from_sandbox',
    ]
    assert chain(text, "inet", "from_sandbox") == [
        "ct state established,related accept",
        ND,
        "ip saddr @online ip daddr 10.89.7.1 udp dport 53 accept",
        "ip saddr @online ip daddr 10.89.7.1 tcp dport 53 accept",
        "ip saddr @proxied ip daddr 10.89.7.1 tcp dport 15001 ct status dnat accept",
        "ip saddr @online tcp dport { 443, 8443 } accept",
        "goto refuse",
    ]


def test_forwarded_traffic_is_split_by_direction() -> None:
    text = render(SPEC, [])
    assert chain(text, "inet", "forward") == [
        "type filter hook forward priority filter - 10; policy accept;",
        'iifname "sbxabc123" oifname "sbxabc123" jump between_sandboxes',
        'iifname "sbxabc123" jump egress',
        'oifname "sbxabc123" jump ingress',
    ]
    assert chain(text, "inet", "between_sandboxes") == [ND, "ip saddr . ip daddr @peers accept", "goto refuse"]
    assert chain(text, "inet", "egress") == [
        "meta nfproto ipv6 goto refuse",
        "ip saddr != @online goto refuse",
        "ip daddr @blocked goto refuse",
        "ip saddr . ip daddr @deny_nets goto refuse",
        "ip saddr @proxied meta l4proto tcp goto refuse",
        "ip saddr @allowlisted ip saddr . ip daddr != @allow_nets goto refuse",
    ]
    assert chain(text, "inet", "ingress") == ["ct state established,related accept", "goto refuse"]


def test_refusals_reject_so_connections_fail_fast() -> None:
    text = render(SPEC, [])
    assert chain(text, "inet", "refuse") == [
        "meta l4proto tcp counter reject with tcp reset",
        "counter reject with icmpx admin-prohibited",
    ]
    assert " drop" not in text.split(f"table bridge {SPEC.table} {{")[0]


def test_bridge_backstop_runs_after_br_netfilter_and_only_on_the_subnet() -> None:
    assert chain(render(SPEC, []), "bridge", "forward") == [
        "type filter hook forward priority 10; policy accept;",
        "ip saddr . ip daddr @peers accept",
        "ip saddr 10.89.7.0/24 ip daddr 10.89.7.0/24 counter drop",
    ]


def test_sets_hold_sorted_validated_elements() -> None:
    text = render(SPEC, ["10.89.7.10", "10.89.7.9", "10.89.7.10"], peers=[("10.89.7.3", "10.89.7.2")])
    assert "elements = { 10.89.7.9, 10.89.7.10 }" in text
    # A pair is allowed both ways, in both tables.
    assert text.count("elements = { 10.89.7.2 . 10.89.7.3, 10.89.7.3 . 10.89.7.2 }") == 2
    with pytest.raises(ValueError):
        render(SPEC, ["10.89.7.2 } ; flush ruleset ; {"])


def test_empty_sets_have_no_elements_line() -> None:
    text = render(SPEC, [])
    online = text[text.index("set online {") :]
    assert online[: online.index("}")].count("elements") == 0


def test_blocked_ranges_are_collapsed_for_nft() -> None:
    text = render(replace(SPEC, blocked=("10.0.0.0/8", "10.1.0.0/16", "192.168.0.0/16")), [])
    assert "elements = { 10.0.0.0/8, 192.168.0.0/16 }" in text
    default = render(SPEC, [])
    for cidr in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10"):
        assert cidr in default


def test_render_is_deterministic() -> None:
    assert render(SPEC, ["10.89.7.3", "10.89.7.2"]) == render(SPEC, ["10.89.7.2", "10.89.7.3"])


def test_render_sandboxes_replaces_the_sets_only() -> None:
    assert render_sandboxes(SPEC, ["10.89.7.3", "10.89.7.2"]).splitlines() == [
        "flush set inet scalebox_abc123 online",
        "add element inet scalebox_abc123 online { 10.89.7.2, 10.89.7.3 }",
        "flush set inet scalebox_abc123 proxied",
        "flush set inet scalebox_abc123 allowlisted",
        "flush set inet scalebox_abc123 allow_nets",
        "flush set inet scalebox_abc123 deny_nets",
        "flush set inet scalebox_abc123 peers",
        "flush set bridge scalebox_abc123 peers",
    ]
    assert render_sandboxes(SPEC, []).splitlines()[0:2] == [
        "flush set inet scalebox_abc123 online",
        "flush set inet scalebox_abc123 proxied",
    ]


def test_render_removal_cannot_fail_on_missing_tables() -> None:
    assert render_removal("scalebox_abc123").splitlines() == [
        "table inet scalebox_abc123",
        "delete table inet scalebox_abc123",
        "table bridge scalebox_abc123",
        "delete table bridge scalebox_abc123",
    ]
    with pytest.raises(ValueError):
        render_removal("x; flush ruleset")


def test_render_presence_lists_both_tables() -> None:
    assert render_presence("scalebox_abc123").splitlines() == [
        "list table inet scalebox_abc123",
        "list table bridge scalebox_abc123",
    ]
    with pytest.raises(ValueError):
        render_presence("x; flush ruleset")


def test_default_blocked_ranges_are_ipv4_networks() -> None:
    assert all(re.fullmatch(r"\d+\.\d+\.\d+\.\d+/\d+", cidr) for cidr in BLOCKED_DESTINATIONS)


# -- the kernel agrees with the syntax ----------------------------------------------------------

needs_nft = pytest.mark.skipif(
    shutil.which("nft") is None or os.geteuid() != 0, reason="nft --check needs nftables and root"
)


def nft_check(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nft", "--check", "-f", "-"], input=text, capture_output=True, text=True, timeout=10)


@needs_nft
@pytest.mark.parametrize(
    ("online", "peers"),
    [([], []), (["10.89.7.2", "10.89.7.3"], [("10.89.7.2", "10.89.7.3")])],
)
def test_nft_accepts_the_ruleset(online: list[str], peers: list[tuple[str, str]]) -> None:
    done = nft_check(render(SPEC, online, peers))
    assert done.returncode == 0, done.stderr


@needs_nft
def test_nft_accepts_the_updates_after_the_ruleset() -> None:
    text = render(SPEC, ["10.89.7.2"]) + render_sandboxes(SPEC, ["10.89.7.3"], [("10.89.7.3", "10.89.7.4")])
    done = nft_check(text + render_removal(SPEC.table))
    assert done.returncode == 0, done.stderr


@needs_nft
def test_nft_check_catches_a_broken_ruleset() -> None:
    # The check is real: a typo is refused.
    assert nft_check(render(SPEC, []).replace("goto refuse", "goto nowhere", 1)).returncode != 0


# -- egress lists -------------------------------------------------------------------------------


def _with_egress(ip: str, egress: dict[str, list[str]], *, state: State = State.RUNNING) -> SandboxRecord:
    return record(int(ip.rsplit(".", 1)[1]), state=state, egress=egress)


def test_egress_sets_cover_online_sandboxes_with_lists_only() -> None:
    records = [
        _with_egress("10.89.7.2", {"allow_out": ["pypi.org", "203.0.113.0/24", "203.0.113.7", "2001:db8::/32"]}),
        _with_egress("10.89.7.3", {"deny_out": ["198.51.100.0/25", "198.51.100.128/25", "*.evil.example"]}),
        _with_egress("10.89.7.4", {}),  # no lists: not proxied
        _with_egress("10.89.7.5", {"allow_out": ["a.example"]}),  # not online (below)
        _with_egress("10.89.7.6", {"allow_out": ["a.example"]}, state=State.TERMINATING),
    ]
    sets = egress_sets(records, frozenset({"10.89.7.2", "10.89.7.3", "10.89.7.4", "10.89.7.6"}))
    assert sets.proxied == {"10.89.7.2", "10.89.7.3"}
    assert sets.allowlisted == {"10.89.7.2"}
    # Overlaps collapsed (nft refuses them), IPv6 left out (the bridge is IPv4 only).
    assert sets.allow_nets == {("10.89.7.2", "203.0.113.0/24")}
    assert sets.deny_nets == {("10.89.7.3", "198.51.100.0/24")}


def test_proxied_sandboxes_have_dns_and_tcp_diverted_except_to_the_host_and_blocked_ranges() -> None:
    text = render(SPEC, [])
    assert chain(text, "inet", "divert") == [
        "type nat hook prerouting priority dstnat; policy accept;",
        'iifname "sbxabc123" ip saddr @proxied fib daddr type != local jump divert_sandbox',
    ]
    assert chain(text, "inet", "divert_sandbox") == [
        "udp dport 53 redirect to :53",
        "tcp dport 53 redirect to :53",
        "ip daddr @blocked return",
        "meta l4proto tcp redirect to :15001",
    ]


def test_egress_sets_render_in_the_table_and_in_updates() -> None:
    sets = EgressSets(
        proxied=frozenset({"10.89.7.2"}),
        allowlisted=frozenset({"10.89.7.2"}),
        allow_nets=frozenset({("10.89.7.2", "203.0.113.7/32"), ("10.89.7.2", "198.51.100.0/24")}),
    )
    text = render(SPEC, ["10.89.7.2"], egress=sets)
    assert "elements = { 10.89.7.2 . 198.51.100.0/24, 10.89.7.2 . 203.0.113.7 }" in text
    update = render_sandboxes(SPEC, ["10.89.7.2"], egress=sets).splitlines()
    for name in ("online", "proxied", "allowlisted", "allow_nets", "deny_nets"):
        assert f"flush set inet {SPEC.table} {name}" in update
    assert f"add element inet {SPEC.table} allowlisted {{ 10.89.7.2 }}" in update
    assert not any("deny_nets {" in line for line in update)


def test_the_proxy_port_cannot_clash() -> None:
    for bad in (0, 53, 443, 70000):
        with pytest.raises(ValueError):
            replace(SPEC, proxy_port=bad)


@needs_nft
async def test_the_presence_check_holds_against_the_real_nft() -> None:
    """The watch asks nft whether the tables are there: with nft's own answers, not a fake's."""
    from controlplane.network import nft
    from controlplane.network.firewall import Firewall, remove_tables

    spec = replace(SPEC, table=f"scalebox_t{os.getpid()}")
    firewall = Firewall(spec=spec, sandboxes=list, apply=nft.apply, bridge_netfilter=lambda _: True)
    try:
        await firewall.install()
        assert await firewall.present()
        await nft.apply(f"delete table inet {spec.table}\n")
        assert not await firewall.present()
    finally:
        await remove_tables(spec.table)
