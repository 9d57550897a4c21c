"""The firewall kept in line with the store (controlplane/network/firewall.py), and the
lifecycle's hooks into it, against the FakeRuntime with a recording `nft`."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from appliance.config import ConfigError, add_serve_arguments, config_from_args, parse_dns_upstream
from controlplane.errors import Unavailable
from controlplane.lifecycle import pool as pool_module
from controlplane.lifecycle import service as service_module
from controlplane.lifecycle.service import LifecycleConfig, SandboxService
from controlplane.lifecycle.states import LIVE, State
from controlplane.network.firewall import Firewall, NoFirewall, remove_tables
from controlplane.network.nft import FirewallError
from controlplane.network.ruleset import FirewallSpec, render, render_removal, render_sandboxes
from controlplane.records import CreateRequest
from controlplane.runtime.fake import FakeRuntime
from controlplane.store import SandboxQuery, Store

SPEC = FirewallSpec(
    table="scalebox_test", interface="sbxtest", subnet="10.99.0.0/24", gateway="10.99.0.1", public_ports=(8443,)
)


@dataclass
class Nft:
    """Records what would have been handed to `nft -f -`; `fail` makes the next calls fail."""

    runtime: FakeRuntime | None = None
    applied: list[str] = field(default_factory=list)
    # The containers that existed at each apply: rules must change before an address is freed.
    containers_seen: list[set[str]] = field(default_factory=list)
    fail: int = 0
    block: trio.Event | None = None
    # The tables were removed behind our back: updates and presence checks fail.
    missing: bool = False

    async def __call__(self, text: str) -> None:
        await trio.lowlevel.checkpoint()
        if self.block is not None:
            await self.block.wait()
        if self.fail:
            self.fail -= 1
            raise FirewallError("nft refused the rules: injected")
        if self.missing and not text.startswith("#"):
            raise FirewallError("nft refused the rules: No such file or directory")
        if text.startswith("#"):
            self.missing = False  # a whole ruleset makes them again
        if text.startswith("list"):
            return
        self.applied.append(text)
        if self.runtime is not None:
            self.containers_seen.append({c.ip or "" for c in self.runtime.containers.values()})

    def updates(self) -> list[str]:
        return [t for t in self.applied if t.startswith("flush set")]


def online_in(text: str) -> set[str]:
    for line in text.splitlines():
        if line.startswith(f"add element inet {SPEC.table} online"):
            return set(line.split("{")[1].rstrip("} ").replace(" ", "").split(","))
    return set()


@dataclass
class Env:
    service: SandboxService
    runtime: FakeRuntime
    store: Store
    nft: Nft
    firewall: Firewall
    bridges: list[str]


def request(**changes: Any) -> CreateRequest:
    return CreateRequest(**{"cpu_count": 1, "memory_mb": 512, "timeout": 300, **changes})


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    runtime = FakeRuntime()

    async def healthy(ip: str, port: int, **_: Any) -> bool:
        await trio.lowlevel.checkpoint()
        return True

    monkeypatch.setattr(service_module, "wait_until_healthy", healthy)
    monkeypatch.setattr(pool_module, "wait_until_healthy", healthy)
    monkeypatch.setattr(pool_module, "agent_healthy", healthy)
    store = Store(tmp_path / "db.sqlite")
    nft = Nft(runtime)
    bridges: list[str] = []

    def bridge_netfilter(interface: str) -> bool:
        bridges.append(interface)
        return True

    firewall = Firewall(
        spec=SPEC,
        sandboxes=lambda: store.sandboxes_in(LIVE | {State.TERMINATING}),
        apply=nft,
        bridge_netfilter=bridge_netfilter,
    )
    config = LifecycleConfig(instance_id="fw-test", agent_dir=tmp_path / "agent", reap_interval=3600, network="n")
    service = SandboxService(store=store, runtime=runtime, config=config, network_policy=firewall)
    yield Env(service, runtime, store, nft, firewall, bridges)
    store.close()


# -- the firewall on its own ----------------------------------------------------------------


async def test_install_renders_everything_from_the_store(env: Env, log_events: list[dict[str, Any]]) -> None:
    await env.firewall.install()
    assert env.nft.applied == [render(SPEC, [])]
    assert env.bridges == ["sbxtest"]
    assert [e["event"] for e in log_events] == ["firewall.installed"]
    assert log_events[0]["table"] == "scalebox_test"


async def test_nothing_is_written_before_install(env: Env) -> None:
    await env.firewall.sandboxes_changed()
    assert env.nft.applied == []


async def test_an_update_with_nothing_to_change_runs_no_nft(env: Env) -> None:
    await env.firewall.install()
    await env.firewall.sandboxes_changed()
    assert len(env.nft.applied) == 1


async def test_concurrent_updates_are_served_together(env: Env) -> None:
    await env.firewall.install()
    await env.service.create(request())
    env.nft.applied.clear()
    env.nft.block = trio.Event()
    # Changes while an update is under way are served together by the next one.
    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(env.firewall.sandboxes_changed)
            await trio.testing.wait_all_tasks_blocked()
            env.store.put_sandbox(_with_new_ip(env))
        await trio.testing.wait_all_tasks_blocked()
        env.nft.block.set()
    # The first found nothing to change yet; the second wrote; the third read the store after
    # every change and wrote for itself and the fourth.
    assert len(env.nft.applied) == 2
    latest = env.store.list_sandboxes(SandboxQuery(states=None, limit=10))[0][0]
    assert online_in(env.nft.applied[-1]) == {latest.ip}


def _with_new_ip(env: Env) -> Any:
    rec = env.store.list_sandboxes(SandboxQuery(states=None, limit=10))[0][0]
    last = int((rec.ip or "10.99.0.2").rsplit(".", 1)[1])
    return replace(rec, ip=f"10.99.0.{last + 1}")


async def test_a_failed_update_is_retried_by_the_next(env: Env) -> None:
    await env.firewall.install()
    rec = await env.service.create(request())
    env.nft.fail = 2  # the update, and the whole ruleset tried after it
    await env.service.delete(rec.id)  # the failure is logged, the sandbox still goes
    assert env.store.get_sandbox(rec.id).state is State.TERMINATED  # type: ignore[union-attr]
    await env.firewall.sandboxes_changed()
    assert online_in(env.nft.applied[-1]) == set()
    assert env.nft.applied[-1] == render_sandboxes(SPEC, [])


async def test_an_update_rewrites_tables_that_were_removed(env: Env, log_events: list[dict[str, Any]]) -> None:
    await env.firewall.install()
    env.nft.missing = True  # `flush ruleset`
    rec = await env.service.create(request())
    assert env.nft.applied[-1] == render(SPEC, [rec.ip or ""])
    assert "firewall.rewriting" in [e["event"] for e in log_events]


async def test_watch_puts_removed_tables_back(
    env: Env, autojump_clock: trio.testing.MockClock, log_events: list[dict[str, Any]]
) -> None:
    await env.firewall.install()
    rec = await env.service.create(request())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(env.firewall.watch)
        await trio.sleep(25)
        applied = len(env.nft.applied)  # present: the checks change nothing
        env.nft.missing = True
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert env.nft.applied[applied:] == [render(SPEC, [rec.ip or ""])]
    assert [e["event"] for e in log_events].count("firewall.restored") == 1


async def test_stop_removes_the_tables_when_no_sandbox_is_left(env: Env, log_events: list[dict[str, Any]]) -> None:
    await env.firewall.install()
    await env.firewall.stop()
    assert env.nft.applied[-1] == render_removal(SPEC.table)
    assert not env.firewall.installed
    assert log_events[-1]["event"] == "firewall.removed"


async def test_stop_keeps_the_tables_while_sandboxes_live_on(env: Env, log_events: list[dict[str, Any]]) -> None:
    await env.firewall.install()
    await env.service.create(request())
    applied = len(env.nft.applied)
    await env.firewall.stop()
    assert len(env.nft.applied) == applied
    assert log_events[-1] == {**log_events[-1], "event": "firewall.kept", "sandboxes": 1}


async def test_remove_tables_and_no_firewall() -> None:
    nft = Nft()
    await remove_tables("scalebox_old", apply=nft)
    assert nft.applied == [render_removal("scalebox_old")]
    await NoFirewall().sandboxes_changed()


# -- the lifecycle's hooks ---------------------------------------------------------------------


async def test_a_sandbox_with_internet_is_let_out_before_create_returns(env: Env) -> None:
    await env.firewall.install()
    rec = await env.service.create(request())
    assert online_in(env.nft.applied[-1]) == {rec.ip}
    # The container was already running with that address when the rule was written.
    assert rec.ip in env.nft.containers_seen[-1]
    spec = env.runtime.containers[rec.container_id or ""].spec
    assert spec.network == "n"


async def test_a_sandbox_without_internet_costs_no_nft_call(env: Env) -> None:
    await env.firewall.install()
    await env.service.create(request(allow_internet_access=False))
    assert env.nft.updates() == []


async def test_the_rule_goes_before_the_container_frees_its_address(env: Env) -> None:
    await env.firewall.install()
    rec = await env.service.create(request())
    await env.service.delete(rec.id)
    assert online_in(env.nft.applied[-1]) == set()
    assert rec.ip in env.nft.containers_seen[-1]
    assert env.runtime.containers == {}


async def test_rules_that_cannot_be_written_undo_the_create(env: Env) -> None:
    await env.firewall.install()
    env.nft.fail = 2
    with pytest.raises(Unavailable) as raised:
        await env.service.create(request())
    assert raised.value.code == "start_failed"
    assert "nft refused" in raised.value.message
    assert env.runtime.containers == {}
    assert env.store.list_sandboxes(SandboxQuery(states=None, limit=10))[0] == []


async def test_pooled_sandboxes_start_offline_and_are_let_out_when_taken(env: Env, tmp_path: Path) -> None:
    config = LifecycleConfig(
        instance_id="fw-test", agent_dir=tmp_path / "agent", reap_interval=3600, warm_pool={"base": 1}
    )
    service = SandboxService(store=env.store, runtime=env.runtime, config=config, network_policy=env.firewall)
    await env.firewall.install()
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await trio.testing.wait_all_tasks_blocked()
        pooled = set(env.runtime.containers)
        assert len(pooled) == 1
        assert env.nft.updates() == []  # a pooled container has no row: not online
        rec = await service.create(request())
        assert rec.container_id in pooled
        assert online_in(env.nft.applied[-1]) == {rec.ip}
        nursery.cancel_scope.cancel()


async def test_a_pooled_sandbox_whose_rules_fail_is_not_handed_out(env: Env, tmp_path: Path) -> None:
    config = LifecycleConfig(
        instance_id="fw-test", agent_dir=tmp_path / "agent", reap_interval=3600, warm_pool={"base": 1}
    )
    service = SandboxService(store=env.store, runtime=env.runtime, config=config, network_policy=env.firewall)
    await env.firewall.install()
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await trio.testing.wait_all_tasks_blocked()
        pooled = set(env.runtime.containers)
        env.nft.fail = 2
        with pytest.raises(Unavailable):
            await service.create(request())
        assert env.store.list_sandboxes(SandboxQuery(states=None, limit=10))[0] == []
        await trio.testing.wait_all_tasks_blocked()  # the pool removes it in the background
        assert not pooled & set(env.runtime.containers)
        nursery.cancel_scope.cancel()


# -- the switch ------------------------------------------------------------------------------


def _serve_config(argv: list[str]) -> Any:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return config_from_args(parser.parse_args(argv))


def test_firewall_is_on_unless_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCALEBOX_FIREWALL", raising=False)
    assert _serve_config([]).firewall is True
    assert _serve_config(["--no-firewall"]).firewall is False
    monkeypatch.setenv("SCALEBOX_FIREWALL", "off")
    assert _serve_config([]).firewall is False
    monkeypatch.setenv("SCALEBOX_FIREWALL", "On")
    assert _serve_config([]).firewall is True
    assert _serve_config(["--no-firewall"]).firewall is False
    monkeypatch.setenv("SCALEBOX_FIREWALL", "maybe")
    with pytest.raises(ConfigError, match="on or off"):
        _serve_config([])


def test_dns_upstream_option() -> None:
    assert parse_dns_upstream("") is None
    assert parse_dns_upstream("10.0.0.2") == ("10.0.0.2", 53)
    assert parse_dns_upstream(" 127.0.0.1:5353 ") == ("127.0.0.1", 5353)
    for bad in ("dns.example", "10.0.0.2:0", "10.0.0.2:x", "::1"):
        with pytest.raises(ConfigError, match="--dns-upstream"):
            parse_dns_upstream(bad)


async def test_egress_lists_reach_the_sets_at_create_and_on_change(env: Env) -> None:
    await env.firewall.install()
    rec = await env.service.create(request(egress={"allow_out": ["a.example", "203.0.113.0/24"]}))
    update = env.nft.updates()[-1]
    assert f"add element inet {SPEC.table} proxied {{ {rec.ip} }}" in update
    assert f"add element inet {SPEC.table} allow_nets {{ {rec.ip} . 203.0.113.0/24 }}" in update
    # The same sandbox, its lists replaced: the sets follow before the call returns.
    writes = len(env.nft.applied)
    await env.service.set_network(rec.id, allow_internet_access=None, egress={"deny_out": ["198.51.100.7"]})
    assert len(env.nft.applied) == writes + 1
    update = env.nft.updates()[-1]
    assert f"add element inet {SPEC.table} deny_nets {{ {rec.ip} . 198.51.100.7 }}" in update
    assert "allowlisted {" not in update
    # Without internet access it is neither online nor proxied.
    await env.service.set_network(rec.id, allow_internet_access=False, egress={})
    assert online_in(env.nft.updates()[-1]) == set()
    assert "proxied {" not in env.nft.updates()[-1]
    assert not env.store.get_sandbox(rec.id).allow_internet_access  # type: ignore[union-attr]
