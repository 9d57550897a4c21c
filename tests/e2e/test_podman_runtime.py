"""The Podman driver against real Podman: a service on a temporary socket, real containers.

Needs `make setup` (Podman, runc and the localhost/scalebox/base image). Every
container a test creates carries a per-test `io.scalebox.instance` label, and the
`instance` fixture removes whatever carries it, pass or fail. Network traffic goes
only to the containers these tests start.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from controlplane.runtime.base import (
    AGENT_MOUNT,
    ContainerNotFound,
    ContainerSpec,
    ImageNotFound,
    RuntimeFailure,
)
from controlplane.runtime.podman_runtime import PodmanRuntime
from controlplane.runtime.service import default_containers_conf, ping, podman_service

pytestmark = pytest.mark.podman

BASE_IMAGE = "localhost/scalebox/base:latest"
LABEL_MANAGED = "io.scalebox.managed"
LABEL_INSTANCE = "io.scalebox.instance"
SLEEP = ["sleep", "infinity"]


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[PodmanRuntime]:
    # A missing Podman is a broken set-up, never a reason to skip: fail loudly.
    assert shutil.which("podman") is not None, "podman is not installed (run `make setup`)"
    async with podman_service(tmp_path / "podman.sock", default_containers_conf()) as url:
        runtime = PodmanRuntime(url)
        try:
            if not await runtime.image_exists(BASE_IMAGE):
                pytest.fail(f"{BASE_IMAGE} is missing: run `make setup`")
            yield runtime
        finally:
            runtime.close()


@pytest.fixture
async def instance(runtime: PodmanRuntime) -> AsyncIterator[str]:
    """A label value unique to this test; its containers are removed afterwards."""
    value = f"test-{secrets.token_hex(4)}"
    try:
        yield value
    finally:
        with trio.CancelScope(shield=True):
            for info in await runtime.list({LABEL_INSTANCE: value}):
                await runtime.remove(info.id)


def spec_for(instance: str, command: list[str], **overrides: object) -> ContainerSpec:
    fields: dict[str, object] = {
        "name": f"scalebox-{instance}-{secrets.token_hex(3)}",
        "image": BASE_IMAGE,
        "command": command,
        "labels": {LABEL_MANAGED: "true", LABEL_INSTANCE: instance},
        "cpu_count": 1.0,
        "memory_mb": 256,
    }
    fields.update(overrides)
    return ContainerSpec(**fields)  # type: ignore[arg-type]


async def test_full_lifecycle(runtime: PodmanRuntime, instance: str) -> None:
    spec = spec_for(instance, SLEEP)
    container_id = await runtime.create(spec)
    created = await runtime.inspect(container_id)
    assert (created.state, created.ip, created.name) == ("created", None, spec.name)

    await runtime.start(container_id)
    info = await runtime.inspect(container_id)
    assert info.id == container_id
    assert info.state == "running"
    assert info.ip is not None and info.ip.startswith("10.88.")
    assert info.labels[LABEL_INSTANCE] == instance

    assert await runtime.exec(container_id, ["python3", "-c", "print(6 * 7)"]) == (0, b"42\n")
    code, output = await runtime.exec(container_id, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (code, output) == (3, b"out\nerr\n")

    stats = await runtime.stats(container_id)
    assert stats.mem_total == 256 * 1024 * 1024
    assert 0 < stats.mem_used < stats.mem_total
    assert stats.cpu_used_pct >= 0
    await runtime.exec(container_id, ["dd", "if=/dev/zero", "of=/tmp/blob", "bs=1M", "count=2"])
    assert (await runtime.stats(container_id)).disk_used >= 2 * 1024 * 1024

    await runtime.pause(container_id)
    assert (await runtime.inspect(container_id)).state == "paused"
    with pytest.raises(RuntimeFailure):
        await runtime.exec(container_id, ["true"])
    await runtime.unpause(container_id)
    assert (await runtime.inspect(container_id)).state == "running"

    listed = await runtime.list({LABEL_MANAGED: "true", LABEL_INSTANCE: instance})
    assert [(c.id, c.state, c.ip) for c in listed] == [(container_id, "running", info.ip)]

    await runtime.remove(container_id)
    with pytest.raises(ContainerNotFound):
        await runtime.inspect(container_id)
    await runtime.remove(container_id)  # already gone: not an error
    assert await runtime.list({LABEL_INSTANCE: instance}) == []


async def test_limits_mount_env_and_user(runtime: PodmanRuntime, instance: str, tmp_path: Path) -> None:
    agent_dir = tmp_path / "agent"
    agent_dir.mkdir()
    (agent_dir / "marker.txt").write_text("agent code here\n")
    spec = spec_for(
        instance, SLEEP, cpu_count=0.5, memory_mb=300, env={"GREETING": "hello"},
        hostname="sbx-test", agent_dir=agent_dir,
    )  # fmt: skip
    container_id = await runtime.create(spec)
    await runtime.start(container_id)

    async def run(script: str) -> str:
        code, output = await runtime.exec(container_id, ["sh", "-c", script])
        assert code == 0, output
        return output.decode()

    # cgroup v1 on these machines: the container sees its own cgroup's files.
    memory = "/sys/fs/cgroup/memory/memory"
    assert (await run(f"cat {memory}.limit_in_bytes {memory}.memsw.limit_in_bytes")).split() == [
        str(300 * 1024 * 1024)
    ] * 2
    assert (await run("cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us")).split() == [
        "50000",
        "100000",
    ]
    # containers.conf's default_ulimits, below the host's hard limit of 20000.
    assert (await run("ulimit -n")).strip() == "16384"
    assert (await run("echo $GREETING; hostname")).split() == ["hello", "sbx-test"]
    assert await run(f"cat {AGENT_MOUNT}/marker.txt") == "agent code here\n"
    code, output = await runtime.exec(container_id, ["touch", f"{AGENT_MOUNT}/written"])
    assert code != 0 and b"Read-only file system" in output
    assert (await run("id -u user; getent passwd user")).split() == ["1000", "user:x:1000:1000::/home/user:/bin/bash"]


async def test_container_port_is_reachable_from_the_host(runtime: PodmanRuntime, instance: str) -> None:
    # The gateway connects straight to <container-ip>:<port> over the bridge.
    # Python as PID 1 ignores SIGTERM, so this also proves remove does not wait for it.
    server = ["python3", "-m", "http.server", "8888", "--bind", "0.0.0.0", "--directory", "/etc"]
    container_id = await runtime.create(spec_for(instance, server))
    await runtime.start(container_id)
    ip = (await runtime.inspect(container_id)).ip
    assert ip is not None

    response = b""
    with trio.fail_after(10):
        while True:
            try:
                stream = await trio.open_tcp_stream(ip, 8888)
            except OSError:
                await trio.sleep(0.05)
                continue
            async with stream:
                await stream.send_all(b"GET /hostname HTTP/1.0\r\n\r\n")
                while chunk := await stream.receive_some():
                    response += chunk
            break
    assert response.startswith(b"HTTP/1.0 200")

    started = time.monotonic()
    await runtime.remove(container_id)
    assert time.monotonic() - started < 3


async def test_remove_paused_and_created_containers(runtime: PodmanRuntime, instance: str) -> None:
    paused = await runtime.create(spec_for(instance, SLEEP))
    await runtime.start(paused)
    await runtime.pause(paused)
    never_started = await runtime.create(spec_for(instance, SLEEP))

    started = time.monotonic()
    await runtime.remove(paused)
    await runtime.remove(never_started)
    assert time.monotonic() - started < 3
    assert await runtime.list({LABEL_INSTANCE: instance}) == []


async def test_list_filters_on_every_label_and_sees_all_states(runtime: PodmanRuntime, instance: str) -> None:
    running = await runtime.create(spec_for(instance, SLEEP, labels={LABEL_INSTANCE: instance, "role": "a"}))
    await runtime.start(running)
    created = await runtime.create(spec_for(instance, SLEEP, labels={LABEL_INSTANCE: instance, "role": "b"}))
    exited = await runtime.create(spec_for(instance, ["true"], labels={LABEL_INSTANCE: instance, "role": "b"}))
    await runtime.start(exited)
    with trio.fail_after(10):
        while (await runtime.inspect(exited)).state == "running":
            await trio.sleep(0.05)

    everything = {c.id: c for c in await runtime.list({LABEL_INSTANCE: instance})}
    assert set(everything) == {running, created, exited}
    assert everything[running].ip is not None
    assert (everything[created].state, everything[created].ip) == ("created", None)
    assert everything[exited].state in ("exited", "stopped")
    assert everything[exited].ip is None
    assert {c.id for c in await runtime.list({LABEL_INSTANCE: instance, "role": "b"})} == {created, exited}


async def test_state_errors(runtime: PodmanRuntime, instance: str) -> None:
    container_id = await runtime.create(spec_for(instance, SLEEP))
    with pytest.raises(RuntimeFailure):
        await runtime.pause(container_id)  # not running
    await runtime.start(container_id)
    await runtime.start(container_id)  # already running: nothing to do
    with pytest.raises(RuntimeFailure):
        await runtime.unpause(container_id)  # not paused

    spec = spec_for(instance, SLEEP)
    await runtime.create(spec)
    with pytest.raises(RuntimeFailure, match="already in use"):
        await runtime.create(spec)

    missing = "0" * 64
    for operation in (runtime.start, runtime.pause, runtime.unpause, runtime.inspect, runtime.stats):
        with pytest.raises(ContainerNotFound):
            await operation(missing)
    with pytest.raises(ContainerNotFound):
        await runtime.exec(missing, ["true"])


async def test_missing_image(runtime: PodmanRuntime, instance: str) -> None:
    assert await runtime.image_exists(BASE_IMAGE)
    assert not await runtime.image_exists("localhost/scalebox/does-not-exist:latest")
    for image in ("localhost/scalebox/does-not-exist:latest", "does-not-exist"):
        with pytest.raises(ImageNotFound):
            await runtime.create(spec_for(instance, SLEEP, image=image))
    assert await runtime.list({LABEL_INSTANCE: instance}) == []


async def test_service_is_reused_and_only_its_starter_stops_it(tmp_path: Path) -> None:
    # A missing Podman is a broken set-up, never a reason to skip: fail loudly.
    assert shutil.which("podman") is not None, "podman is not installed (run `make setup`)"
    socket_path = tmp_path / "podman.sock"
    async with podman_service(socket_path) as url:
        async with podman_service(socket_path) as reused:
            assert reused == url
        # The inner block reused the service, so leaving it stopped nothing.
        assert await ping(socket_path)
    assert not await ping(socket_path)


async def test_service_replaces_a_stale_socket_file(tmp_path: Path) -> None:
    # A missing Podman is a broken set-up, never a reason to skip: fail loudly.
    assert shutil.which("podman") is not None, "podman is not installed (run `make setup`)"
    socket_path = tmp_path / "podman.sock"
    # What a killed service leaves: the socket file, with nobody listening.
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(socket_path))
    assert socket_path.exists() and not await ping(socket_path)
    async with podman_service(socket_path):
        assert await ping(socket_path)


async def test_service_that_cannot_start_says_why(tmp_path: Path) -> None:
    # A missing Podman is a broken set-up, never a reason to skip: fail loudly.
    assert shutil.which("podman") is not None, "podman is not installed (run `make setup`)"
    broken = tmp_path / "containers.conf"
    broken.write_text("[engine\nruntime = \n")
    with trio.fail_after(20), pytest.raises(RuntimeFailure, match="exited with status"):
        async with podman_service(tmp_path / "podman.sock", broken):
            pass


async def test_service_reports_a_missing_configuration(tmp_path: Path) -> None:
    with pytest.raises(RuntimeFailure, match="missing"):
        async with podman_service(tmp_path / "podman.sock", tmp_path / "nope.conf"):
            pass


async def test_unreachable_service_is_a_runtime_failure(tmp_path: Path) -> None:
    runtime = PodmanRuntime(f"unix://{tmp_path}/nobody-listens.sock", timeout=2)
    with pytest.raises(RuntimeFailure, match="unreachable"):
        await runtime.inspect("anything")
