"""SandboxService against the in-memory FakeRuntime, with a fake clock and a fake probe."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from controlplane.errors import Conflict, NotFound, Unavailable
from controlplane.lifecycle import service as service_module
from controlplane.lifecycle.service import (
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_SANDBOX,
    LifecycleConfig,
    SandboxService,
)
from controlplane.lifecycle.states import State
from controlplane.records import CreateRequest, SandboxRecord
from controlplane.runtime.base import AGENT_PORT, ContainerSpec
from controlplane.runtime.fake import BASE_IMAGE, FakeRuntime
from controlplane.store import SandboxQuery, Store
from controlplane.tokens import mint_access_token

T0 = 1_700_000_000.0
INSTANCE = "test-instance"


@dataclass
class Clock:
    now: float = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class Probe:
    """Stands in for wait_until_healthy: answers `healthy`, or blocks forever."""

    healthy: bool = True
    block: bool = False
    calls: list[tuple[str, int]] | None = None

    async def __call__(self, ip: str, port: int, *, deadline: float, **_: Any) -> bool:
        assert self.calls is not None
        self.calls.append((ip, port))
        await trio.lowlevel.checkpoint()
        if self.block:
            await trio.sleep_forever()
        return self.healthy


@dataclass
class Env:
    service: SandboxService
    runtime: FakeRuntime
    store: Store
    clock: Clock
    probe: Probe


ACCESS_SECRET = b"s" * 32


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    probe = Probe(calls=[])
    monkeypatch.setattr(service_module, "wait_until_healthy", probe)
    store = Store(tmp_path / "db.sqlite")
    runtime = FakeRuntime()
    clock = Clock()
    config = LifecycleConfig(
        instance_id=INSTANCE, agent_dir=tmp_path / "agent", reap_interval=3600, access_secret=ACCESS_SECRET
    )
    yield Env(SandboxService(store=store, runtime=runtime, config=config, clock=clock), runtime, store, clock, probe)
    store.close()


def request(**changes: Any) -> CreateRequest:
    fields: dict[str, Any] = {"cpu_count": 1, "memory_mb": 512, "timeout": 300}
    fields.update(changes)
    return CreateRequest(**fields)


def all_rows(store: Store) -> list[SandboxRecord]:
    return store.list_sandboxes(SandboxQuery(states=None, limit=1000))[0]


def row(env: Env, sandbox_id: str) -> SandboxRecord:
    rec = env.store.get_sandbox(sandbox_id)
    assert rec is not None
    return rec


def container_of(env: Env, rec: SandboxRecord) -> Any:
    assert rec.container_id is not None
    return env.runtime.containers[rec.container_id]


def assert_nothing_left(env: Env) -> None:
    assert all_rows(env.store) == []
    assert env.runtime.containers == {}


# -- create -------------------------------------------------------------------------------


async def test_create_runs_and_records(env: Env) -> None:
    rec = await env.service.create(
        request(timeout=120, metadata={"k": "v"}, env_vars={"FOO": "bar"}, cpu_count=2, memory_mb=1024)
    )
    assert rec.id.startswith("sbx-")
    assert rec.state is State.RUNNING
    assert rec.started_at == T0
    assert rec.timeout_at == T0 + 120
    assert rec.ip and rec.ip.startswith("10.99.0.")
    assert row(env, rec.id) == rec

    container = container_of(env, rec)
    assert container.state == "running"
    spec: ContainerSpec = container.spec
    assert spec.labels == {LABEL_MANAGED: "true", LABEL_INSTANCE: INSTANCE, LABEL_SANDBOX: rec.id}
    assert spec.labels["io.scalebox.sandbox-id"] == rec.id
    assert spec.image == BASE_IMAGE
    # The agent gets its own sandbox's token to check requests that reach it directly.
    assert spec.env == {"FOO": "bar", "SCALEBOX_ACCESS_TOKEN": mint_access_token(ACCESS_SECRET, rec.id)}
    assert (spec.cpu_count, spec.memory_mb) == (2.0, 1024)
    assert spec.hostname == rec.id
    assert env.probe.calls == [(rec.ip, AGENT_PORT)]


async def test_create_accepts_template_id_form(env: Env) -> None:
    rec = await env.service.create(request(template="tpl-base"))
    assert rec.template_id == "base"


async def test_create_unknown_template_is_404_and_leaves_nothing(env: Env) -> None:
    with pytest.raises(NotFound):
        await env.service.create(request(template="nope"))
    assert_nothing_left(env)
    assert not any(op == "create" for op, _ in env.runtime.calls)


async def test_create_missing_image_is_503_and_leaves_nothing(env: Env) -> None:
    env.runtime.images.clear()
    with pytest.raises(Unavailable) as info:
        await env.service.create(request())
    assert info.value.code == "image_missing"
    assert_nothing_left(env)


async def test_create_probe_failure_leaves_no_row_and_no_container(env: Env) -> None:
    env.probe.healthy = False
    with pytest.raises(Unavailable) as info:
        await env.service.create(request())
    assert info.value.status == 503
    assert "health" in info.value.message
    assert_nothing_left(env)


@pytest.mark.parametrize("operation", ["create", "start", "inspect"])
async def test_create_runtime_failure_leaves_no_row_and_no_container(env: Env, operation: str) -> None:
    env.runtime.fail_next(operation)
    with pytest.raises(Unavailable) as info:
        await env.service.create(request())
    assert info.value.code == "start_failed"
    assert "injected" in info.value.message
    assert_nothing_left(env)


async def test_create_without_ip_fails_cleanly(env: Env, tmp_path: Path) -> None:
    env.runtime.address = ""
    with pytest.raises(Unavailable) as info:
        await env.service.create(request())
    assert "IP" in info.value.message
    assert_nothing_left(env)


async def test_create_cancelled_midway_leaves_nothing(env: Env) -> None:
    env.probe.block = True
    with trio.move_on_after(0.05) as scope:
        await env.service.create(request())
    assert scope.cancelled_caught
    assert_nothing_left(env)


async def test_create_cleanup_survives_a_failing_remove(env: Env) -> None:
    env.probe.healthy = False
    env.runtime.fail_next("remove")
    with pytest.raises(Unavailable):
        await env.service.create(request())
    # The row is gone; the container the failed remove left is the reconciler's job.
    assert all_rows(env.store) == []
    await env.service.reconcile()
    assert env.runtime.containers == {}


async def test_two_creates_get_distinct_ids_and_addresses(env: Env) -> None:
    a = await env.service.create(request())
    b = await env.service.create(request())
    assert a.id != b.id
    assert a.ip != b.ip
    assert len(env.runtime.containers) == 2


# -- is_async create ----------------------------------------------------------------------


async def test_async_create_ends_running(env: Env) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(env.service.run)
        rec = await env.service.create(request(is_async=True))
        assert rec.state is State.STARTING
        assert row(env, rec.id).state is State.STARTING
        await trio.testing.wait_all_tasks_blocked()
        done = row(env, rec.id)
        assert done.state is State.RUNNING
        assert done.is_async
        assert done.timeout_at == T0 + 300
        assert container_of(env, done).state == "running"
        nursery.cancel_scope.cancel()


async def test_async_create_failure_ends_failed_without_container(env: Env) -> None:
    env.probe.healthy = False
    async with trio.open_nursery() as nursery:
        await nursery.start(env.service.run)
        rec = await env.service.create(request(is_async=True))
        await trio.testing.wait_all_tasks_blocked()
        failed = row(env, rec.id)
        assert failed.state is State.FAILED
        assert failed.reason and "health" in failed.reason
        assert failed.ended_at == T0
        assert failed.ip is None
        assert env.runtime.containers == {}
        nursery.cancel_scope.cancel()
    # A failed sandbox can still be deleted.
    assert (await env.service.delete(rec.id)).state is State.TERMINATED


# -- pause and resume ---------------------------------------------------------------------


async def test_pause_resume_cycle(env: Env) -> None:
    rec = await env.service.create(request(timeout=100))
    env.clock.now = T0 + 30
    paused = await env.service.pause(rec.id)
    assert paused.state is State.PAUSED
    assert paused.paused_at == T0 + 30
    assert container_of(env, paused).state == "paused"
    assert row(env, rec.id).state is State.PAUSED

    with pytest.raises(Conflict) as info:
        await env.service.pause(rec.id)
    assert info.value.status == 409
    assert info.value.code == "already_paused"

    env.clock.now = T0 + 500
    resumed = await env.service.resume(rec.id)
    assert resumed.state is State.RUNNING
    assert resumed.paused_at is None
    assert resumed.timeout_at == T0 + 500 + 100  # a fresh lifetime
    assert container_of(env, resumed).state == "running"
    assert row(env, rec.id) == resumed


async def test_resume_with_timeout(env: Env) -> None:
    rec = await env.service.create(request(timeout=100))
    await env.service.pause(rec.id)
    resumed = await env.service.resume(rec.id, timeout=50)
    assert (resumed.timeout, resumed.timeout_at) == (50, T0 + 50)


async def test_resume_running_is_connect(env: Env) -> None:
    rec = await env.service.create(request(timeout=100))
    assert await env.service.resume(rec.id) == rec
    env.clock.now = T0 + 10
    extended = await env.service.resume(rec.id, timeout=60)
    assert extended.state is State.RUNNING
    assert (extended.timeout, extended.timeout_at) == (60, T0 + 70)


async def test_pause_and_resume_conflicts(env: Env) -> None:
    rec = await env.service.create(request())
    await env.service.delete(rec.id)
    with pytest.raises(Conflict) as info:
        await env.service.pause(rec.id)
    assert "terminated" in info.value.message
    with pytest.raises(Conflict):
        await env.service.resume(rec.id)


async def test_unknown_sandbox_is_404_everywhere(env: Env) -> None:
    for call in (
        env.service.pause("sbx-nope"),
        env.service.resume("sbx-nope"),
        env.service.set_timeout("sbx-nope", 10),
        env.service.delete("sbx-nope"),
        env.service.stats("sbx-nope"),
    ):
        with pytest.raises(NotFound):
            await call
    with pytest.raises(NotFound):
        env.service.get("sbx-nope")


async def test_pause_runtime_failure_rolls_back_to_running(env: Env) -> None:
    rec = await env.service.create(request())
    env.runtime.fail_next("pause")
    with pytest.raises(Unavailable):
        await env.service.pause(rec.id)
    assert row(env, rec.id).state is State.RUNNING
    assert (await env.service.pause(rec.id)).state is State.PAUSED


async def test_resume_runtime_failure_rolls_back_to_paused(env: Env) -> None:
    rec = await env.service.create(request())
    await env.service.pause(rec.id)
    env.runtime.fail_next("unpause")
    with pytest.raises(Unavailable):
        await env.service.resume(rec.id)
    assert row(env, rec.id).state is State.PAUSED
    assert (await env.service.resume(rec.id)).state is State.RUNNING


# -- timeout ------------------------------------------------------------------------------


async def test_set_timeout(env: Env) -> None:
    rec = await env.service.create(request(timeout=100))
    env.clock.now = T0 + 40
    updated = await env.service.set_timeout(rec.id, 600)
    assert (updated.timeout, updated.timeout_at) == (600, T0 + 40 + 600)
    assert row(env, rec.id) == updated
    await env.service.pause(rec.id)
    assert (await env.service.set_timeout(rec.id, 5)).timeout == 5


async def test_set_timeout_on_terminated_is_conflict(env: Env) -> None:
    rec = await env.service.create(request())
    await env.service.delete(rec.id)
    with pytest.raises(Conflict):
        await env.service.set_timeout(rec.id, 10)


# -- delete -------------------------------------------------------------------------------


async def test_delete_removes_container_and_is_idempotent(env: Env) -> None:
    rec = await env.service.create(request())
    env.clock.now = T0 + 5
    gone = await env.service.delete(rec.id)
    assert gone.state is State.TERMINATED
    assert gone.reason == "deleted"
    assert gone.ended_at == T0 + 5
    assert gone.ip is None
    assert env.runtime.containers == {}
    assert row(env, rec.id) == gone
    again = await env.service.delete(rec.id)
    assert again == gone


async def test_delete_paused(env: Env) -> None:
    rec = await env.service.create(request())
    await env.service.pause(rec.id)
    assert (await env.service.delete(rec.id)).state is State.TERMINATED
    assert env.runtime.containers == {}


async def test_delete_also_removes_stray_labelled_containers(env: Env) -> None:
    rec = await env.service.create(request())
    stray = ContainerSpec(name="stray", image=BASE_IMAGE, command=["x"], labels=env.service.labels(rec.id))
    await env.runtime.create(stray)
    await env.service.delete(rec.id)
    assert env.runtime.containers == {}


async def test_delete_runtime_failure_marks_failed_then_retry_works(env: Env) -> None:
    rec = await env.service.create(request())
    env.runtime.fail_next("remove")
    with pytest.raises(Unavailable) as info:
        await env.service.delete(rec.id)
    assert info.value.code == "remove_failed"
    assert row(env, rec.id).state is State.FAILED
    assert (await env.service.delete(rec.id)).state is State.TERMINATED
    assert env.runtime.containers == {}


async def test_delete_only_touches_its_own_sandbox(env: Env) -> None:
    a = await env.service.create(request())
    b = await env.service.create(request())
    await env.service.delete(a.id)
    assert row(env, b.id).state is State.RUNNING
    assert list(env.runtime.containers) == [b.container_id]


# -- stats --------------------------------------------------------------------------------


async def test_stats(env: Env) -> None:
    rec = await env.service.create(request(memory_mb=256))
    got, stats = await env.service.stats(rec.id)
    assert got.id == rec.id
    assert stats is not None
    assert stats.mem_total == 256 * 1024 * 1024
    await env.service.delete(rec.id)
    assert (await env.service.stats(rec.id))[1] is None


# -- reaper -------------------------------------------------------------------------------


async def test_reap_once_terminates_expired(env: Env) -> None:
    keep = await env.service.create(request(timeout=1000))
    expire = await env.service.create(request(timeout=100))
    env.clock.now = T0 + 99
    await env.service.reap_once()
    assert row(env, expire.id).state is State.RUNNING
    env.clock.now = T0 + 100
    await env.service.reap_once()
    gone = row(env, expire.id)
    assert gone.state is State.TERMINATED
    assert gone.reason == "timeout"
    assert expire.container_id not in env.runtime.containers
    assert row(env, keep.id).state is State.RUNNING
    assert keep.container_id in env.runtime.containers


async def test_reap_once_pauses_when_auto_pause(env: Env) -> None:
    rec = await env.service.create(request(timeout=100, auto_pause=True))
    env.clock.now = T0 + 101
    await env.service.reap_once()
    paused = row(env, rec.id)
    assert paused.state is State.PAUSED
    assert container_of(env, paused).state == "paused"
    # A paused sandbox is not reaped again.
    env.clock.now = T0 + 10_000
    await env.service.reap_once()
    assert row(env, rec.id).state is State.PAUSED


async def test_reap_once_respects_extended_timeout(env: Env) -> None:
    rec = await env.service.create(request(timeout=100))
    env.clock.now = T0 + 50
    await env.service.set_timeout(rec.id, 1000)
    env.clock.now = T0 + 200
    await env.service.reap_once()
    assert row(env, rec.id).state is State.RUNNING


async def test_reap_once_survives_runtime_failure(env: Env) -> None:
    a = await env.service.create(request(timeout=10))
    b = await env.service.create(request(timeout=10))
    env.clock.now = T0 + 20
    env.runtime.fail_next("remove")
    await env.service.reap_once()
    states = {row(env, a.id).state, row(env, b.id).state}
    assert states == {State.FAILED, State.TERMINATED}


async def test_run_reaps_in_the_background(env: Env, tmp_path: Path) -> None:
    service = SandboxService(
        store=env.store,
        runtime=env.runtime,
        config=LifecycleConfig(instance_id=INSTANCE, agent_dir=tmp_path, reap_interval=0.01),
        clock=env.clock,
    )
    rec = await service.create(request(timeout=5))
    env.clock.now = T0 + 6
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        with trio.fail_after(2):
            while row(env, rec.id).state is not State.TERMINATED:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


# -- reconcile ----------------------------------------------------------------------------


async def add_container(env: Env, sandbox_id: str, state: str = "running", *, instance: str = INSTANCE) -> str:
    labels = {**env.service.labels(sandbox_id), LABEL_INSTANCE: instance}
    cid = await env.runtime.create(
        ContainerSpec(
            name=f"scalebox-{sandbox_id}-{len(env.runtime.containers)}", image=BASE_IMAGE, command=["x"], labels=labels
        )
    )
    if state in ("running", "paused"):
        await env.runtime.start(cid)
    if state == "paused":
        await env.runtime.pause(cid)
    if state == "exited":
        await env.runtime.start(cid)
        env.runtime.simulate_exit(cid)
    return cid


def put_row(env: Env, sandbox_id: str, state: State, container_id: str | None, **changes: Any) -> SandboxRecord:
    rec = SandboxRecord(
        id=sandbox_id,
        template_id="base",
        state=state,
        container_id=container_id,
        ip="10.99.0.50",
        cpu_count=1,
        memory_mb=512,
        storage_gb=0,
        timeout=300,
        created_at=T0 - 100,
        updated_at=T0 - 100,
        started_at=None if state is State.STARTING else T0 - 90,
        timeout_at=None if state is State.STARTING else T0 + 210,
        **changes,
    )
    env.store.put_sandbox(rec)
    return rec


async def test_reconcile_removes_labelled_container_without_row(env: Env) -> None:
    orphan = await add_container(env, "sbx-orphan0001")
    foreign = await add_container(env, "sbx-foreign001", instance="another-appliance")
    await env.service.reconcile()
    assert orphan not in env.runtime.containers
    assert foreign in env.runtime.containers  # another appliance's container is not ours


async def test_reconcile_removes_orphan_containers_of_finished_rows(env: Env) -> None:
    cid = await add_container(env, "sbx-finished01")
    put_row(env, "sbx-finished01", State.TERMINATED, cid)
    await env.service.reconcile()
    assert env.runtime.containers == {}
    assert row(env, "sbx-finished01").state is State.TERMINATED


async def test_reconcile_unfinished_sync_create_is_undone(env: Env) -> None:
    cid = await add_container(env, "sbx-starting01")
    put_row(env, "sbx-starting01", State.STARTING, cid)
    await env.service.reconcile()
    assert env.store.get_sandbox("sbx-starting01") is None
    assert env.runtime.containers == {}


async def test_reconcile_unfinished_sync_create_without_container_id(env: Env) -> None:
    await add_container(env, "sbx-starting02")
    put_row(env, "sbx-starting02", State.STARTING, None)
    await env.service.reconcile()
    assert env.store.get_sandbox("sbx-starting02") is None
    assert env.runtime.containers == {}


async def test_reconcile_unfinished_async_create_fails(env: Env) -> None:
    cid = await add_container(env, "sbx-starting03")
    put_row(env, "sbx-starting03", State.STARTING, cid, is_async=True)
    await env.service.reconcile()
    rec = row(env, "sbx-starting03")
    assert rec.state is State.FAILED
    assert rec.reason and "restarted" in rec.reason
    assert rec.ended_at == T0
    assert env.runtime.containers == {}


async def test_reconcile_running_row_without_container_is_terminated(env: Env) -> None:
    put_row(env, "sbx-vanished01", State.RUNNING, "deadbeef" * 8)
    await env.service.reconcile()
    rec = row(env, "sbx-vanished01")
    assert rec.state is State.TERMINATED
    assert rec.reason and "vanished" in rec.reason
    assert rec.ip is None
    assert rec.ended_at == T0


async def test_reconcile_running_row_with_exited_container_is_terminated(env: Env) -> None:
    cid = await add_container(env, "sbx-exited0001", "exited")
    put_row(env, "sbx-exited0001", State.RUNNING, cid)
    await env.service.reconcile()
    rec = row(env, "sbx-exited0001")
    assert rec.state is State.TERMINATED
    assert rec.reason and "exited" in rec.reason
    assert env.runtime.containers == {}


async def test_reconcile_terminating_row_is_finished(env: Env) -> None:
    cid = await add_container(env, "sbx-terminat01")
    put_row(env, "sbx-terminat01", State.TERMINATING, cid)
    put_row(env, "sbx-terminat02", State.TERMINATING, None)
    await env.service.reconcile()
    for sid in ("sbx-terminat01", "sbx-terminat02"):
        rec = row(env, sid)
        assert rec.state is State.TERMINATED
        assert rec.ended_at == T0
    assert env.runtime.containers == {}


async def test_reconcile_paused_container_with_running_row_becomes_paused(env: Env) -> None:
    cid = await add_container(env, "sbx-paused0001", "paused")
    put_row(env, "sbx-paused0001", State.RUNNING, cid)
    await env.service.reconcile()
    rec = row(env, "sbx-paused0001")
    assert rec.state is State.PAUSED
    assert rec.paused_at == T0
    assert env.runtime.containers[cid].state == "paused"
    # And it resumes from there.
    assert (await env.service.resume("sbx-paused0001")).state is State.RUNNING


async def test_reconcile_running_container_with_paused_row_becomes_running(env: Env) -> None:
    cid = await add_container(env, "sbx-running001", "running")
    put_row(env, "sbx-running001", State.PAUSED, cid, paused_at=T0 - 50)
    await env.service.reconcile()
    rec = row(env, "sbx-running001")
    assert rec.state is State.RUNNING
    assert rec.paused_at is None
    assert rec.timeout_at == T0 + 300


@pytest.mark.parametrize(("container", "expected"), [("running", State.RUNNING), ("paused", State.PAUSED)])
async def test_reconcile_half_done_pause_or_resume_follows_the_container(
    env: Env, container: str, expected: State
) -> None:
    cid = await add_container(env, "sbx-halfway001", container)
    put_row(env, "sbx-halfway001", State.PAUSING, cid)
    put_row(env, "sbx-halfway002", State.RESUMING, None)
    await env.service.reconcile()
    assert row(env, "sbx-halfway001").state is expected
    assert row(env, "sbx-halfway002").state is State.TERMINATED


async def test_reconcile_refreshes_address_and_container_id(env: Env) -> None:
    cid = await add_container(env, "sbx-moved00001", "running")
    put_row(env, "sbx-moved00001", State.RUNNING, "stale-container-id")
    await env.service.reconcile()
    rec = row(env, "sbx-moved00001")
    assert rec.state is State.RUNNING
    assert rec.container_id == cid
    assert rec.ip == env.runtime.containers[cid].ip
    assert rec.timeout_at == T0 + 210  # unchanged


async def test_reconcile_leaves_healthy_sandboxes_alone(env: Env) -> None:
    rec = await env.service.create(request())
    await env.service.reconcile()
    assert row(env, rec.id) == replace(rec, updated_at=T0)
    assert container_of(env, rec).state == "running"


async def test_reconcile_is_idempotent(env: Env) -> None:
    await add_container(env, "sbx-orphan0002")
    put_row(env, "sbx-vanished02", State.RUNNING, None)
    await env.service.reconcile()
    before = all_rows(env.store)
    await env.service.reconcile()
    assert all_rows(env.store) == before
    assert env.runtime.containers == {}


async def test_reconcile_removes_extra_containers_of_one_sandbox(env: Env) -> None:
    kept = await add_container(env, "sbx-twice00001", "running")
    extra = await add_container(env, "sbx-twice00001", "running")
    put_row(env, "sbx-twice00001", State.RUNNING, kept)
    await env.service.reconcile()
    assert kept in env.runtime.containers
    assert extra not in env.runtime.containers
    assert row(env, "sbx-twice00001").container_id == kept


async def test_terminated_sandboxes_release_their_locks(env: Env) -> None:
    recs = [await env.service.create(request()) for _ in range(3)]
    for rec in recs:
        await env.service.delete(rec.id)
    assert env.service._locks == {}
