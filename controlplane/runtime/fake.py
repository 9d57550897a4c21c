"""An in-memory `Runtime` for tests: Podman's states, labels and errors without Podman.

It behaves as the real driver was seen to behave against Podman 4.3
(tests/e2e/test_podman_runtime.py holds the proof for the real one):

    create   -> "created", no address; unknown image -> ImageNotFound;
                a name already in use -> RuntimeFailure
    start    "created"/"exited" -> "running" with a fresh 10.99.0.x address;
             "running" -> nothing to do; "paused" -> RuntimeFailure
    pause    "running" -> "paused", anything else -> RuntimeFailure
    unpause  "paused" -> "running", anything else -> RuntimeFailure
    exec     only in a running container, else RuntimeFailure
    stats    figures for a running or paused container, zeros otherwise
    remove   any state, at once; a missing container is not an error
    ensure_network  the network by name, made on first call (10.99.0.0/24, the
             addresses `start` hands out); later calls return it unchanged
    build    reports one line per instruction, then names the image `tag`; a FROM
             naming an image it does not have -> RuntimeFailure
    commit   a running or paused container -> the image `tag`
    load     an existing file -> the image `tag`

Containers are found by id, by name or by a unique id prefix, as Podman does;
any other reference raises ContainerNotFound. Every call is a Trio checkpoint.

Hooks for tests: `fail_next` makes the next call of an operation raise,
`simulate_exit` makes a container's PID 1 exit, `exec_handler` decides what `exec`
returns, `calls` records every call in order, `containers` holds the state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from controlplane.runtime.base import (
    ContainerInfo,
    ContainerNotFound,
    ContainerSpec,
    ContainerStats,
    ImageNotFound,
    NetworkInfo,
    Runtime,
    RuntimeFailure,
)

BASE_IMAGE = "localhost/scalebox/base:latest"
_MIB = 1024 * 1024
_OPERATIONS = frozenset(
    {"create", "start", "inspect", "pause", "unpause", "remove", "list", "stats", "image_exists", "exec", "logs"}
    | {"ensure_network", "build", "commit", "load", "tag", "remove_image"}
)


@dataclass
class FakeContainer:
    id: str
    spec: ContainerSpec
    state: str = "created"
    ip: str | None = None
    exit_code: int | None = None
    # What `logs` returns; tests may add lines.
    log_lines: list[bytes] = field(default_factory=list)
    # What `stats` reports while it runs; tests may change them.
    cpu_used_pct: float = 1.5
    mem_used: int = 24 * _MIB
    disk_used: int = 0
    # Its cumulative CPU counter (a restarted container's starts again from 0).
    cpu_seconds: float = 0.0
    exec_log: list[list[str]] = field(default_factory=list)

    def info(self) -> ContainerInfo:
        return ContainerInfo(
            id=self.id, name=self.spec.name, state=self.state, ip=self.ip, labels=dict(self.spec.labels)
        )


ExecHandler = Callable[[FakeContainer, list[str]], tuple[int, bytes]]


def _succeed_silently(container: FakeContainer, command: list[str]) -> tuple[int, bytes]:
    return 0, b""


class FakeRuntime:
    """In-memory `Runtime`. `address`, when set, is given to every started container
    instead of a fresh 10.99.0.x (to point them all at a fake agent on loopback)."""

    def __init__(
        self,
        *,
        images: Iterable[str] = (BASE_IMAGE,),
        address: str | None = None,
        exec_handler: ExecHandler = _succeed_silently,
    ) -> None:
        self.images = set(images)
        self.address = address
        self.exec_handler = exec_handler
        self.containers: dict[str, FakeContainer] = {}
        self.networks: dict[str, NetworkInfo] = {}
        self.calls: list[tuple[str, str]] = []
        self._failures: dict[str, list[RuntimeFailure]] = {}
        self._created = 0
        # Image name -> its labels (build, commit); tests read them.
        self.image_labels: dict[str, dict[str, str]] = {}
        # Every commit: (container id, tag, changes).
        self.commits: list[tuple[str, str, list[str]]] = []
        # When set, a build waits for it after its first line (to watch a build under way).
        self.build_gate: trio.Event | None = None

    # -- test hooks ------------------------------------------------------------------

    def fail_next(self, operation: str, error: RuntimeFailure | None = None) -> None:
        """Make the next call of `operation` (a Runtime method name) raise `error`."""
        if operation not in _OPERATIONS:
            raise ValueError(f"not a Runtime operation: {operation!r}")
        failure = error or RuntimeFailure(f"injected failure of {operation}")
        self._failures.setdefault(operation, []).append(failure)

    def simulate_exit(self, container_id: str, exit_code: int = 0) -> None:
        """The container's PID 1 exits: it is "exited" and loses its address."""
        container = self._find(container_id)
        container.state, container.ip, container.exit_code = "exited", None, exit_code

    # -- plumbing --------------------------------------------------------------------

    async def _enter(self, operation: str, argument: str) -> None:
        await trio.lowlevel.checkpoint()
        self.calls.append((operation, argument))
        pending = self._failures.get(operation)
        if pending:
            raise pending.pop(0)

    def _find(self, ref: str) -> FakeContainer:
        if ref in self.containers:
            return self.containers[ref]
        for container in self.containers.values():
            if container.spec.name == ref:
                return container
        matches = [c for c in self.containers.values() if ref and c.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        raise ContainerNotFound(f'no container with name or ID "{ref}" found: no such container')

    def _free_address(self) -> str:
        if self.address is not None:
            return self.address
        taken = {c.ip for c in self.containers.values()}
        for host in range(2, 255):
            candidate = f"10.99.0.{host}"
            if candidate not in taken:
                return candidate
        raise RuntimeFailure("no free address on the fake bridge network")

    @staticmethod
    def _improper(container: FakeContainer, action: str) -> RuntimeFailure:
        return RuntimeFailure(f'"{container.id}" is {container.state}, can\'t {action}: container state improper')

    # -- Runtime -----------------------------------------------------------------------

    async def create(self, spec: ContainerSpec) -> str:
        await self._enter("create", spec.name)
        if spec.cpu_count <= 0 or spec.memory_mb <= 0:
            raise ValueError(f"cpu_count and memory_mb must be positive: {spec!r}")
        if spec.image not in self.images:
            raise ImageNotFound(f"{spec.image}: image not known")
        if any(c.spec.name == spec.name for c in self.containers.values()):
            raise RuntimeFailure(f'the container name "{spec.name}" is already in use')
        self._created += 1
        container_id = hashlib.sha256(f"fake-container-{self._created}".encode()).hexdigest()
        self.containers[container_id] = FakeContainer(id=container_id, spec=spec)
        return container_id

    async def start(self, container_id: str) -> None:
        await self._enter("start", container_id)
        container = self._find(container_id)
        if container.state == "running":
            return
        if container.state not in ("created", "exited"):
            raise self._improper(container, "start")
        container.state, container.ip, container.exit_code = "running", self._free_address(), None

    async def inspect(self, container_id: str) -> ContainerInfo:
        await self._enter("inspect", container_id)
        return self._find(container_id).info()

    async def pause(self, container_id: str) -> None:
        await self._enter("pause", container_id)
        container = self._find(container_id)
        if container.state != "running":
            raise self._improper(container, "pause")
        container.state = "paused"

    async def unpause(self, container_id: str) -> None:
        await self._enter("unpause", container_id)
        container = self._find(container_id)
        if container.state != "paused":
            raise self._improper(container, "unpause")
        container.state = "running"

    async def remove(self, container_id: str) -> None:
        await self._enter("remove", container_id)
        try:
            container = self._find(container_id)
        except ContainerNotFound:
            return
        del self.containers[container.id]

    async def stats(self, container_id: str, *, disk: bool = True) -> ContainerStats:
        await self._enter("stats", container_id)
        container = self._find(container_id)
        if container.state not in ("running", "paused"):
            return ContainerStats(cpu_used_pct=0.0, mem_used=0, mem_total=0, disk_used=0)
        return ContainerStats(
            cpu_used_pct=container.cpu_used_pct,
            mem_used=container.mem_used,
            mem_total=container.spec.memory_mb * _MIB,
            disk_used=container.disk_used if disk else 0,
            cpu_seconds=container.cpu_seconds,
        )

    async def image_exists(self, image: str) -> bool:
        await self._enter("image_exists", image)
        return image in self.images

    async def logs(self, container_id: str, tail: int) -> bytes:
        await self._enter("logs", container_id)
        container = self._find(container_id)
        return b"".join(line + b"\n" for line in container.log_lines[-tail:])

    async def exec(self, container_id: str, command: list[str]) -> tuple[int, bytes]:
        await self._enter("exec", container_id)
        container = self._find(container_id)
        if container.state != "running":
            raise RuntimeFailure(f"cannot exec in container {container.id}: it is {container.state}")
        container.exec_log.append(list(command))
        return self.exec_handler(container, command)

    async def ensure_network(self, name: str, *, interface: str, labels: dict[str, str]) -> NetworkInfo:
        await self._enter("ensure_network", name)
        if name not in self.networks:
            self.networks[name] = NetworkInfo(
                name=name, interface=interface, subnet="10.99.0.0/24", gateway="10.99.0.1"
            )
        return self.networks[name]

    async def build(
        self, containerfile: str, tag: str, *, labels: dict[str, str], on_line: Callable[[str], None]
    ) -> str:
        await self._enter("build", tag)
        steps = [line.strip() for line in containerfile.splitlines() if line.strip() and not line.startswith("#")]
        stages: set[str] = {"scratch"}
        for number, step in enumerate(steps, 1):
            on_line(f"STEP {number}/{len(steps)}: {step}")
            if number == 1 and self.build_gate is not None:
                await self.build_gate.wait()
            if step.upper().startswith("FROM "):
                words = step.split()
                if words[1] not in self.images and words[1] not in stages:
                    raise RuntimeFailure(f"{words[1]}: image not known")
                if len(words) == 4:
                    stages.add(words[3])
        self.images.add(tag)
        self.image_labels[tag] = dict(labels)
        image_id = hashlib.sha256(f"fake-image-{tag}".encode()).hexdigest()
        on_line(image_id)
        return image_id

    async def commit(
        self, container_id: str, tag: str, *, labels: dict[str, str], changes: list[str], pause: bool
    ) -> str:
        await self._enter("commit", container_id)
        container = self._find(container_id)
        if container.state not in ("running", "paused"):
            raise self._improper(container, "commit")
        self.images.add(tag)
        self.image_labels[tag] = dict(labels)
        self.commits.append((container.id, tag, list(changes)))
        return hashlib.sha256(f"fake-image-{tag}".encode()).hexdigest()

    async def load(self, archive: Path, tag: str) -> str:
        await self._enter("load", str(archive))
        if not archive.is_file():
            raise RuntimeFailure(f"open {archive}: no such file or directory")
        self.images.add(tag)
        return hashlib.sha256(f"fake-image-{tag}".encode()).hexdigest()

    async def tag(self, image: str, new: str) -> None:
        await self._enter("tag", image)
        if image not in self.images:
            raise ImageNotFound(f"{image}: image not known")
        self.images.add(new)

    async def remove_image(self, image: str) -> None:
        await self._enter("remove_image", image)
        self.images.discard(image)
        self.image_labels.pop(image, None)

    # Last in the class: a method named `list` shadows the builtin in the
    # annotations of every method after it.
    async def list(self, labels: dict[str, str]) -> list[ContainerInfo]:
        await self._enter("list", ",".join(f"{k}={v}" for k, v in sorted(labels.items())))
        wanted = labels.items()
        return [c.info() for c in self.containers.values() if wanted <= c.spec.labels.items()]


if TYPE_CHECKING:
    # mypy proves the class satisfies the interface.
    _conforms: type[Runtime] = FakeRuntime
