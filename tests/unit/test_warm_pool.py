"""The warm pool against the in-memory FakeRuntime: takes, fallbacks, refills, races, restarts."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from appliance.config import ConfigError, add_serve_arguments, config_from_args, parse_warm_pool
from controlplane.lifecycle import pool as pool_module
from controlplane.lifecycle import service as service_module
from controlplane.lifecycle.pool import FIRST_RETRY, MAX_RETRY, needs_fill, next_retry
from controlplane.lifecycle.service import LABEL_SANDBOX, LifecycleConfig, SandboxService
from controlplane.lifecycle.states import State
from controlplane.ports import parse_ports
from controlplane.records import CreateRequest, SandboxRecord
from controlplane.runtime.base import ContainerSpec
from controlplane.runtime.fake import BASE_IMAGE, FakeRuntime
from controlplane.store import SandboxQuery, Store
from controlplane.tokens import mint_access_token

T0 = 1_700_000_000.0
SECRET = b"p" * 32
CODE_IMAGE = "localhost/scalebox/code-interpreter:latest"


@dataclass
class Clock:
    now: float = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class Agents:
    """Stands in for the probes: an agent answers when a running container has its address.

    `stall` makes the pool's boot-time wait hang (a refill that takes forever);
    `stall_take` makes the take-time probe hang.
    """

    runtime: FakeRuntime
    stall: bool = False
    stall_take: bool = False
    probed: list[str] = field(default_factory=list)

    def answers(self, ip: str) -> bool:
        return any(c.ip == ip and c.state == "running" for c in self.runtime.containers.values())

    async def wait_until_healthy(self, ip: str, port: int, *, deadline: float, **_: Any) -> bool:
        await trio.lowlevel.checkpoint()
        if self.stall:
            await trio.sleep_forever()
        return self.answers(ip)

    async def agent_healthy(self, ip: str, port: int, *, timeout: float = 2.0) -> bool:
        self.probed.append(ip)
        await trio.lowlevel.checkpoint()
        if self.stall_take:
            await trio.sleep_forever()
        return self.answers(ip)

    async def fresh_probe(self, ip: str, port: int, *, deadline: float, **_: Any) -> bool:
        # The fresh-create path is never stalled: it shows creates do not wait for refills.
        await trio.lowlevel.checkpoint()
        return self.answers(ip)


@dataclass
class Env:
    tmp_path: Path
    runtime: FakeRuntime
    store: Store
    clock: Clock
    agents: Agents
    service: SandboxService = field(init=False)

    def __post_init__(self) -> None:
        self.service = self.new_service({"base": 2})

    def new_service(self, sizes: dict[str, int], **config: Any) -> SandboxService:
        settings = LifecycleConfig(
            instance_id="pool-test",
            agent_dir=self.tmp_path / "agent",
            access_secret=SECRET,
            reap_interval=3600,
            warm_pool=sizes,
            pool_check_interval=config.pop("pool_check_interval", 3600),
            **config,
        )
        return SandboxService(store=self.store, runtime=self.runtime, config=settings, clock=self.clock)

    def pooled_ids(self, template: str = "base") -> list[str]:
        return [w.sandbox_id for w in self.service.pool._ready.get(template, [])]

    def rows(self) -> list[SandboxRecord]:
        return self.store.list_sandboxes(SandboxQuery(states=None, limit=1000))[0]

    def spec_of(self, rec: SandboxRecord) -> ContainerSpec:
        assert rec.container_id is not None
        return self.runtime.containers[rec.container_id].spec

    def creates(self) -> int:
        return sum(op == "create" for op, _ in self.runtime.calls)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    runtime = FakeRuntime(images=[BASE_IMAGE, CODE_IMAGE])
    agents = Agents(runtime)
    monkeypatch.setattr(service_module, "wait_until_healthy", agents.fresh_probe)
    monkeypatch.setattr(pool_module, "wait_until_healthy", agents.wait_until_healthy)
    monkeypatch.setattr(pool_module, "agent_healthy", agents.agent_healthy)
    store = Store(tmp_path / "db.sqlite")
    yield Env(tmp_path, runtime, store, Clock(), agents)
    store.close()


@pytest.fixture
async def running(env: Env) -> AsyncIterator[Env]:
    """The service (reaper and pool) running, the pool full."""
    async with trio.open_nursery() as nursery:
        await nursery.start(env.service.run)
        await trio.testing.wait_all_tasks_blocked()
        assert len(env.pooled_ids()) == 2
        yield env
        nursery.cancel_scope.cancel()


def request(**changes: Any) -> CreateRequest:
    fields: dict[str, Any] = {"cpu_count": 1, "memory_mb": 512, "timeout": 300}
    fields.update(changes)
    return CreateRequest(**fields)


def without_id(spec: ContainerSpec, sandbox_id: str) -> ContainerSpec:
    """The spec with every field derived from the sandbox id blanked, to compare two sandboxes."""
    env = dict(spec.env)
    assert env.pop("SCALEBOX_ACCESS_TOKEN") == mint_access_token(SECRET, sandbox_id)
    labels = dict(spec.labels)
    assert labels.pop(LABEL_SANDBOX) == sandbox_id
    assert (spec.name, spec.hostname) == (f"scalebox-{sandbox_id}", sandbox_id)
    return replace(spec, name="", hostname="", env=env, labels=labels)


# -- taking -------------------------------------------------------------------------------


async def test_create_takes_a_pooled_sandbox(running: Env) -> None:
    env = running
    pooled = env.pooled_ids()
    creates_before = env.creates()
    env.clock.now = T0 + 50
    rec = await env.service.create(request(timeout=120, metadata={"owner": "me"}))

    # The oldest pooled sandbox, with no container created for this request.
    assert rec.id == pooled[0]
    assert env.creates() == creates_before
    assert ("image_exists", BASE_IMAGE) not in env.runtime.calls
    # Its row is the one a fresh create writes once the agent answered.
    assert rec.state is State.RUNNING
    assert (rec.created_at, rec.started_at, rec.timeout_at) == (T0 + 50, T0 + 50, T0 + 170)
    assert rec.metadata == {"owner": "me"}
    assert env.store.get_sandbox(rec.id) == rec
    assert env.runtime.containers[rec.container_id or ""].state == "running"
    # The agent checks the token the API hands out for this id.
    assert env.spec_of(rec).env["SCALEBOX_ACCESS_TOKEN"] == mint_access_token(SECRET, rec.id)

    # Refilled in the background.
    await trio.testing.wait_all_tasks_blocked()
    assert env.pooled_ids()[0] == pooled[1] and len(env.pooled_ids()) == 2
    assert rec.id not in env.pooled_ids()


async def test_pooled_container_is_what_a_fresh_create_makes(running: Env) -> None:
    env = running
    taken = await env.service.create(request())
    fresh_service = env.new_service({})
    fresh = await fresh_service.create(request())
    assert without_id(env.spec_of(taken), taken.id) == without_id(env.spec_of(fresh), fresh.id)
    assert replace(taken, id="", container_id="", ip="") == replace(fresh, id="", container_id="", ip="")


@pytest.mark.parametrize(
    "changes",
    [
        {"timeout": 5, "name": "job", "metadata": {"k": "v"}},
        {"auto_pause": True, "allow_internet_access": False, "secure": False},
        {"storage_gb": 10, "custom_ports": parse_ports([{"port": 8080, "name": "web", "protocol": "tcp"}])},
        {"is_async": True},
        {"template": "tpl-base"},
    ],
)
async def test_fields_that_live_only_in_the_row_are_served_from_the_pool(running: Env, changes: dict[str, Any]) -> None:
    env = running
    pooled = env.pooled_ids()
    rec = await env.service.create(request(**changes))
    assert rec.id == pooled[0]
    assert rec.state is State.RUNNING
    for key, value in changes.items():
        if key == "custom_ports":
            assert rec.custom_ports == [p.stored(None) for p in value]
        elif key != "template":
            assert getattr(rec, key) == value
    assert rec.template_id == "base"


@pytest.mark.parametrize(
    "changes",
    [
        {"cpu_count": 2},
        {"memory_mb": 1024},
        {"env_vars": {"FOO": "bar"}},
        {"template": "code-interpreter"},
    ],
)
async def test_a_create_a_pooled_container_cannot_honour_gets_a_fresh_one(
    running: Env, changes: dict[str, Any]
) -> None:
    env = running
    pooled = env.pooled_ids()
    rec = await env.service.create(request(**changes))
    assert rec.id not in pooled
    assert env.pooled_ids() == pooled
    spec = env.spec_of(rec)
    assert (spec.cpu_count, spec.memory_mb) == (float(rec.cpu_count), rec.memory_mb)
    assert {k: v for k, v in spec.env.items() if not k.startswith("SCALEBOX_")} == rec.env_vars


async def test_empty_pool_falls_back_without_waiting_for_the_refill(running: Env) -> None:
    env = running
    env.agents.stall = True  # refills never finish
    a = await env.service.create(request())
    b = await env.service.create(request())
    assert env.pooled_ids() == []
    c = await env.service.create(request())  # a fresh create; the stalled refill is not awaited
    assert c.state is State.RUNNING
    assert len({a.id, b.id, c.id}) == 3


async def test_no_pool_configured_means_every_create_is_fresh(env: Env) -> None:
    service = env.new_service({"base": 0})
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await trio.testing.wait_all_tasks_blocked()
        assert env.runtime.containers == {}
        rec = await service.create(request())
        assert env.creates() == 1 and rec.state is State.RUNNING
        nursery.cancel_scope.cancel()


async def test_concurrent_creates_never_share_a_pooled_sandbox(running: Env) -> None:
    env = running
    pooled = set(env.pooled_ids())
    results: list[SandboxRecord] = []

    async def create() -> None:
        results.append(await env.service.create(request()))

    async with trio.open_nursery() as nursery:
        for _ in range(6):
            nursery.start_soon(create)
    assert len({r.id for r in results}) == 6
    assert len({r.container_id for r in results}) == 6
    assert pooled <= {r.id for r in results}
    assert all(r.state is State.RUNNING for r in results)
    # Each running sandbox has its own container, labelled with its own id.
    for r in results:
        assert env.spec_of(r).labels[LABEL_SANDBOX] == r.id


# -- invisible until taken --------------------------------------------------------------------


async def test_pooled_sandboxes_are_not_listed_reaped_or_stored(running: Env) -> None:
    env = running
    assert env.rows() == []
    assert env.service.list(SandboxQuery()) == ([], 0)
    for sandbox_id in env.pooled_ids():
        assert env.store.get_sandbox(sandbox_id) is None
    env.clock.now = T0 + 10**6
    await env.service.reap_once()
    assert len(env.pooled_ids()) == 2
    assert len(env.runtime.containers) == 2


# -- dead pooled containers ----------------------------------------------------------------------


async def test_a_take_skips_and_replaces_a_dead_pooled_container(running: Env) -> None:
    env = running
    dead, alive = env.service.pool._ready["base"]
    env.runtime.simulate_exit(dead.container_id)
    rec = await env.service.create(request())
    assert rec.id == alive.sandbox_id
    await trio.testing.wait_all_tasks_blocked()
    assert dead.container_id not in env.runtime.containers
    assert len(env.pooled_ids()) == 2 and dead.sandbox_id not in env.pooled_ids()


async def test_all_pooled_dead_falls_back_to_a_fresh_create(running: Env) -> None:
    env = running
    pooled = list(env.service.pool._ready["base"])
    for warm in pooled:
        env.runtime.simulate_exit(warm.container_id)
    rec = await env.service.create(request())
    assert rec.id not in {w.sandbox_id for w in pooled} and rec.state is State.RUNNING


async def test_the_checker_replaces_a_pooled_container_that_died(env: Env, autojump_clock: Any) -> None:
    service = env.service = env.new_service({"base": 2}, pool_check_interval=5)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await trio.sleep(1)
        dead = service.pool._ready["base"][0]
        env.runtime.simulate_exit(dead.container_id)
        await trio.sleep(5)
        assert dead.container_id not in env.runtime.containers
        assert len(env.pooled_ids()) == 2 and dead.sandbox_id not in env.pooled_ids()
        nursery.cancel_scope.cancel()


async def test_a_cancelled_take_removes_the_container(running: Env) -> None:
    env = running
    first = env.service.pool._ready["base"][0]
    env.agents.stall_take = True
    with trio.move_on_after(1):
        await env.service.create(request())
    env.agents.stall_take = False
    await trio.testing.wait_all_tasks_blocked()
    assert first.container_id not in env.runtime.containers
    assert env.rows() == []


async def test_failed_fills_are_retried_with_a_growing_pause(env: Env, autojump_clock: Any) -> None:
    env.runtime.images.clear()
    async with trio.open_nursery() as nursery:
        await nursery.start(env.service.run)
        await trio.sleep(2.5)  # fails at 0, 1 and 3 s: two tries so far
        assert sum(op == "create" for op, _ in env.runtime.calls) == 2
        assert env.runtime.containers == {}
        env.runtime.images.add(BASE_IMAGE)
        await trio.sleep(2)
        assert len(env.pooled_ids()) == 2
        nursery.cancel_scope.cancel()


# -- shutdown and restart ----------------------------------------------------------------------


async def test_shutdown_removes_pooled_containers_and_keeps_sandboxes(env: Env) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(env.service.run)
        await trio.testing.wait_all_tasks_blocked()
        rec = await env.service.create(request())
        await trio.testing.wait_all_tasks_blocked()
        assert len(env.runtime.containers) == 3
        nursery.cancel_scope.cancel()
    assert list(env.runtime.containers) == [rec.container_id]


async def test_shutdown_during_a_fill_leaves_no_container(env: Env) -> None:
    env.agents.stall = True
    async with trio.open_nursery() as nursery:
        await nursery.start(env.service.run)
        await trio.testing.wait_all_tasks_blocked()
        assert len(env.runtime.containers) == 1  # booting, one at a time
        nursery.cancel_scope.cancel()
    assert env.runtime.containers == {}


async def test_reconcile_after_a_crash_removes_stale_pooled_containers(env: Env) -> None:
    # What a killed appliance leaves: a pool (no rows) and a sandbox taken from it.
    for _ in range(3):
        await env.service.pool.fill_one("base")
    rec = await env.service.create(request())
    assert len(env.runtime.containers) == 3

    restarted = env.new_service({"base": 2})
    await restarted.reconcile()
    assert list(env.runtime.containers) == [rec.container_id]
    assert env.store.get_sandbox(rec.id) == rec

    # And the new pool fills afresh.
    async with trio.open_nursery() as nursery:
        await nursery.start(restarted.run)
        await trio.testing.wait_all_tasks_blocked()
        assert len(restarted.pool._ready["base"]) == 2
        nursery.cancel_scope.cancel()


# -- pure decisions -----------------------------------------------------------------------------


def test_needs_fill() -> None:
    assert needs_fill(2, 1) and not needs_fill(2, 2) and not needs_fill(0, 0)


def test_next_retry_doubles_up_to_a_bound() -> None:
    delays = [FIRST_RETRY]
    for _ in range(10):
        delays.append(next_retry(delays[-1]))
    assert delays[:3] == [FIRST_RETRY, 2 * FIRST_RETRY, 4 * FIRST_RETRY]
    assert max(delays) == MAX_RETRY
    assert next_retry(0.0) == FIRST_RETRY


# -- the option -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "sizes"),
    [
        ("", {}),
        ("base=4", {"base": 4}),
        (" base = 2 , code-interpreter=1 ,", {"base": 2, "code-interpreter": 1}),
        ("tpl-base=0", {"base": 0}),
        ("base=64", {"base": 64}),
    ],
)
def test_parse_warm_pool(text: str, sizes: dict[str, int]) -> None:
    assert parse_warm_pool(text) == sizes


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("base", "TEMPLATE=N"),
        ("=3", "TEMPLATE=N"),
        ("nope=1", "no template 'nope'; available: base, base-gvisor, code-interpreter"),
        ("base=65", "from 0 to 64"),
        ("base=-1", "from 0 to 64"),
        ("base=two", "from 0 to 64"),
        ("base=", "from 0 to 64"),
        ("base=1,tpl-base=2", "given twice"),
    ],
)
def test_parse_warm_pool_refuses(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match="--warm-pool") as info:
        parse_warm_pool(text)
    assert says in str(info.value)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser.parse_args(argv)


def test_warm_pool_option_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCALEBOX_WARM_POOL", raising=False)
    assert config_from_args(_parse([])).warm_pool == {}
    assert config_from_args(_parse(["--warm-pool", "base=3"])).warm_pool == {"base": 3}
    monkeypatch.setenv("SCALEBOX_WARM_POOL", "code-interpreter=2")
    assert config_from_args(_parse([])).warm_pool == {"code-interpreter": 2}
    assert config_from_args(_parse(["--warm-pool", "base=1"])).warm_pool == {"base": 1}
    monkeypatch.setenv("SCALEBOX_WARM_POOL", "base=100")
    with pytest.raises(ConfigError, match="from 0 to 64"):
        config_from_args(_parse([]))
