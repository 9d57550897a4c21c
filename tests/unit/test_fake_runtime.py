"""The in-memory FakeRuntime keeps the real driver's promises (see its docstring)."""

from __future__ import annotations

import pytest

from controlplane.runtime.base import (
    ContainerNotFound,
    ContainerSpec,
    ContainerStats,
    ImageNotFound,
    Runtime,
    RuntimeFailure,
)
from controlplane.runtime.fake import BASE_IMAGE, FakeContainer, FakeRuntime

LABELS = {"io.scalebox.managed": "true", "io.scalebox.instance": "test"}


def spec(name: str = "box", **overrides: object) -> ContainerSpec:
    fields: dict[str, object] = {"name": name, "image": BASE_IMAGE, "command": ["sleep", "infinity"]}
    fields.update(overrides)
    return ContainerSpec(**fields)  # type: ignore[arg-type]


async def running(runtime: FakeRuntime, name: str = "box", **overrides: object) -> str:
    container_id = await runtime.create(spec(name, **overrides))
    await runtime.start(container_id)
    return container_id


def test_is_a_runtime() -> None:
    runtime: Runtime = FakeRuntime()
    assert runtime is not None


async def test_lifecycle_states_and_addresses() -> None:
    runtime = FakeRuntime()
    container_id = await runtime.create(spec(labels=LABELS, memory_mb=256))
    assert len(container_id) == 64
    info = await runtime.inspect(container_id)
    assert (info.name, info.state, info.ip, info.labels) == ("box", "created", None, LABELS)

    await runtime.start(container_id)
    await runtime.start(container_id)  # already running: nothing to do
    info = await runtime.inspect(container_id)
    assert (info.state, info.ip) == ("running", "10.99.0.2")

    await runtime.pause(container_id)
    assert (await runtime.inspect(container_id)).state == "paused"
    assert (await runtime.inspect(container_id)).ip == "10.99.0.2"
    await runtime.unpause(container_id)
    assert (await runtime.inspect(container_id)).state == "running"

    assert await runtime.stats(container_id) == ContainerStats(
        cpu_used_pct=1.5, mem_used=24 * 1024 * 1024, mem_total=256 * 1024 * 1024, disk_used=0
    )

    await runtime.remove(container_id)
    with pytest.raises(ContainerNotFound):
        await runtime.inspect(container_id)
    await runtime.remove(container_id)  # already gone: not an error


async def test_addresses_are_unique_and_reused_after_remove() -> None:
    runtime = FakeRuntime()
    first = await running(runtime, "a")
    second = await running(runtime, "b")
    assert [(await runtime.inspect(c)).ip for c in (first, second)] == ["10.99.0.2", "10.99.0.3"]
    await runtime.remove(first)
    third = await running(runtime, "c")
    assert (await runtime.inspect(third)).ip == "10.99.0.2"


async def test_fixed_address_for_a_fake_agent_on_loopback() -> None:
    runtime = FakeRuntime(address="127.0.0.1")
    assert (await runtime.inspect(await running(runtime))).ip == "127.0.0.1"


@pytest.mark.parametrize(
    ("state", "operation"),
    [
        ("created", "pause"),
        ("created", "unpause"),
        ("running", "unpause"),
        ("paused", "pause"),
        ("paused", "start"),
        ("exited", "pause"),
    ],
)
async def test_improper_state_is_a_runtime_failure(state: str, operation: str) -> None:
    runtime = FakeRuntime()
    container_id = await runtime.create(spec())
    if state != "created":
        await runtime.start(container_id)
    if state == "paused":
        await runtime.pause(container_id)
    if state == "exited":
        runtime.simulate_exit(container_id)
    with pytest.raises(RuntimeFailure, match="state improper"):
        await getattr(runtime, operation)(container_id)
    assert (await runtime.inspect(container_id)).state == state


async def test_exited_container_has_no_address_and_can_start_again() -> None:
    runtime = FakeRuntime()
    container_id = await running(runtime)
    runtime.simulate_exit(container_id, exit_code=137)
    info = await runtime.inspect(container_id)
    assert (info.state, info.ip) == ("exited", None)
    assert runtime.containers[container_id].exit_code == 137
    assert (await runtime.stats(container_id)).mem_total == 0
    await runtime.start(container_id)
    assert (await runtime.inspect(container_id)).state == "running"


async def test_missing_image_and_name_conflict() -> None:
    runtime = FakeRuntime()
    assert await runtime.image_exists(BASE_IMAGE)
    assert not await runtime.image_exists("localhost/other:latest")
    with pytest.raises(ImageNotFound):
        await runtime.create(spec(image="localhost/other:latest"))
    await runtime.create(spec("taken"))
    with pytest.raises(RuntimeFailure, match="already in use"):
        await runtime.create(spec("taken"))
    assert len(runtime.containers) == 1


async def test_found_by_id_name_or_unique_prefix() -> None:
    runtime = FakeRuntime()
    container_id = await runtime.create(spec("named"))
    for ref in (container_id, "named", container_id[:12]):
        assert (await runtime.inspect(ref)).id == container_id
    with pytest.raises(ContainerNotFound):
        await runtime.inspect("")
    for operation in (runtime.start, runtime.pause, runtime.unpause, runtime.inspect, runtime.stats):
        with pytest.raises(ContainerNotFound):
            await operation("0" * 64)


async def test_list_needs_every_label_and_sees_every_state() -> None:
    runtime = FakeRuntime()
    mine_running = await running(runtime, "a", labels=LABELS)
    mine_created = await runtime.create(spec("b", labels={**LABELS, "extra": "1"}))
    await running(runtime, "c", labels={"io.scalebox.managed": "true", "io.scalebox.instance": "other"})
    await running(runtime, "d")

    assert {c.id for c in await runtime.list(LABELS)} == {mine_running, mine_created}
    assert {c.id for c in await runtime.list({**LABELS, "extra": "1"})} == {mine_created}
    assert len(await runtime.list({"io.scalebox.managed": "true"})) == 3
    assert len(await runtime.list({})) == 4


async def test_exec_runs_only_in_a_running_container() -> None:
    def handler(container: FakeContainer, command: list[str]) -> tuple[int, bytes]:
        return 7, " ".join(command).encode()

    runtime = FakeRuntime(exec_handler=handler)
    container_id = await running(runtime)
    assert await runtime.exec(container_id, ["echo", "hi"]) == (7, b"echo hi")
    assert runtime.containers[container_id].exec_log == [["echo", "hi"]]
    await runtime.pause(container_id)
    with pytest.raises(RuntimeFailure):
        await runtime.exec(container_id, ["true"])


async def test_injected_failures_hit_the_next_call_only() -> None:
    runtime = FakeRuntime()
    runtime.fail_next("start")
    runtime.fail_next("remove", ContainerNotFound("gone"))
    container_id = await runtime.create(spec())
    with pytest.raises(RuntimeFailure, match="injected failure of start"):
        await runtime.start(container_id)
    assert (await runtime.inspect(container_id)).state == "created"
    await runtime.start(container_id)
    with pytest.raises(ContainerNotFound, match="gone"):
        await runtime.remove(container_id)
    await runtime.remove(container_id)
    assert runtime.containers == {}
    with pytest.raises(ValueError):
        runtime.fail_next("reboot")


async def test_calls_are_recorded_in_order() -> None:
    runtime = FakeRuntime()
    container_id = await running(runtime)
    await runtime.remove(container_id)
    assert runtime.calls == [("create", "box"), ("start", container_id), ("remove", container_id)]
