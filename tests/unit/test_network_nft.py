"""The nft shell (controlplane/network/nft.py) against the real kernel: a table of the
test's own, made and removed; no other table is touched."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.network import nft
from controlplane.network.ruleset import FirewallSpec, render, render_removal, render_sandboxes

pytestmark = pytest.mark.skipif(shutil.which("nft") is None or os.geteuid() != 0, reason="needs nftables and root")


@pytest.fixture
def spec() -> Iterator[FirewallSpec]:
    tag = secrets.token_hex(4)
    made = FirewallSpec(
        table=f"scalebox_unit{tag}",
        interface=f"sbxunit{tag}",
        subnet="10.231.7.0/24",
        gateway="10.231.7.1",
        public_ports=(8443,),
    )
    yield made
    subprocess.run(["nft", "-f", "-"], input=render_removal(made.table), text=True, check=False)


def listed(spec: FirewallSpec) -> str:
    done = subprocess.run(["nft", "list", "table", "inet", spec.table], capture_output=True, text=True, check=False)
    return done.stdout


@pytest.fixture(params=["libnftables", "command"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "command":
        monkeypatch.setattr(nft, "_libnftables", lambda: None)
    else:
        assert nft._libnftables() is not None
    return str(request.param)


def test_apply_update_and_remove(spec: FirewallSpec, way: str) -> None:
    nft.run(render(spec, ["10.231.7.2"]))
    assert "elements = { 10.231.7.2 }" in listed(spec)
    nft.run(render_sandboxes(spec, ["10.231.7.3", "10.231.7.4"]))
    assert "elements = { 10.231.7.3, 10.231.7.4 }" in listed(spec)
    # Applying the whole again replaces the table: no rule is doubled.
    nft.run(render(spec, []))
    assert listed(spec).count("jump from_sandbox") == 1
    nft.run(render_removal(spec.table))
    assert listed(spec) == ""
    # Removing what is not there is not an error.
    nft.run(render_removal(spec.table))


def test_a_refused_ruleset_changes_nothing_and_says_why(spec: FirewallSpec, way: str) -> None:
    nft.run(render(spec, ["10.231.7.2"]))
    broken = render_sandboxes(spec, ["10.231.7.9"]) + f"add element inet {spec.table} nosuchset {{ 10.0.0.1 }}\n"
    with pytest.raises(nft.FirewallError, match=r"nosuchset|No such file"):
        nft.run(broken)
    # One transaction: the flush before the error did not happen either.
    assert "elements = { 10.231.7.2 }" in listed(spec)


def test_check_only_changes_nothing(spec: FirewallSpec) -> None:
    nft.run(render(spec, []), check_only=True)
    assert listed(spec) == ""


def test_missing_nft_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nft, "_libnftables", lambda: None)
    monkeypatch.setattr(nft, "NFT", "/nonexistent/nft")
    with pytest.raises(nft.FirewallError, match="--no-firewall"):
        nft.run("list tables\n")


def test_bridge_netfilter_is_switched_on_for_the_bridge_only(tmp_path: Path) -> None:
    bridge = tmp_path / "sbxx" / "bridge"
    bridge.mkdir(parents=True)
    for name in ("nf_call_iptables", "nf_call_ip6tables"):
        (bridge / name).write_text("0\n")
    assert nft.ensure_bridge_netfilter("sbxx", sys_class_net=tmp_path) is Path("/proc/sys/net/bridge").is_dir()
    if Path("/proc/sys/net/bridge").is_dir():
        assert (bridge / "nf_call_iptables").read_text() == "1"
        assert (bridge / "nf_call_ip6tables").read_text() == "1"
    # A bridge that does not exist (no container attached yet) is no error.
    assert nft.ensure_bridge_netfilter("absent", sys_class_net=tmp_path) is False
