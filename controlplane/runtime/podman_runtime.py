"""The Podman driver: the `Runtime` interface over podman-py and Podman's API service.

podman-py is synchronous (requests over a unix socket), so every call runs in a
Trio worker thread: at most `max_concurrency` at once, each borrowing a client
from a small pool because a requests session is not meant to be shared between
threads. A call that has started is not abandoned when the caller is cancelled:
an abandoned create would leave a container nobody knows the id of. Every request
has a timeout instead, so a wedged service cannot hang the caller forever.

podman-py's errors are translated to the project's in one place, `_podman_errors`.

Where podman-py 5.x falls short against Podman 4.3 the driver sends the request
through podman-py's own HTTP client (`client.api`) instead:

- list: podman-py turns a list of label filters into the string of a Python list,
  which matches nothing;
- remove: podman-py cannot pass `timeout`, and without `timeout=0` a forced remove
  waits 10 s for a PID 1 that ignores SIGTERM;
- exec: `exec_run` returns the multiplexed stream with its 8-byte frame headers
  still in it, and addresses the container by name.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import requests
import trio
from podman.client import PodmanClient
from podman.errors import APIError, PodmanError
from podman.errors import ImageNotFound as PodmanImageNotFound

from controlplane.runtime.base import (
    AGENT_MOUNT,
    VENDOR_MOUNT,
    ContainerInfo,
    ContainerNotFound,
    ContainerSpec,
    ContainerStats,
    ImageNotFound,
    Runtime,
    RuntimeFailure,
)

T = TypeVar("T")

# CFS period for CPU limits; the quota is cpu_count periods' worth of CPU time.
_CPU_PERIOD_US = 100_000
_MIB = 1024 * 1024


class PodmanRuntime:
    """`Runtime` backed by a Podman API service at `base_url` (`unix:///...`)."""

    def __init__(self, base_url: str, *, max_concurrency: int = 8, timeout: float = 60.0) -> None:
        self.base_url = base_url
        self._timeout = timeout
        self._limiter = trio.CapacityLimiter(max_concurrency)
        # Idle clients; list.pop and list.append are atomic, so threads share it safely.
        self._idle: list[PodmanClient] = []

    def close(self) -> None:
        """Close the pooled HTTP connections. Calls still running keep their client."""
        while self._idle:
            self._idle.pop().api.close()

    # -- plumbing ------------------------------------------------------------------

    async def _call(self, fn: Callable[[PodmanClient], T]) -> T:
        with _podman_errors(self.base_url):
            return await trio.to_thread.run_sync(self._with_client, fn, limiter=self._limiter)

    def _with_client(self, fn: Callable[[PodmanClient], T]) -> T:
        try:
            client = self._idle.pop()
        except IndexError:
            client = PodmanClient(base_url=self.base_url, timeout=self._timeout)
        try:
            return fn(client)
        finally:
            self._idle.append(client)

    # -- Runtime -------------------------------------------------------------------

    async def create(self, spec: ContainerSpec) -> str:
        kwargs = create_arguments(spec)

        def create(client: PodmanClient) -> str:
            container = client.containers.create(spec.image, spec.command, **kwargs)
            return str(container.id)

        return await self._call(create)

    async def start(self, container_id: str) -> None:
        # 304 (already running) is not an error, as with `podman start`.
        await self._call(lambda c: _post(c, _container_path(container_id, "/start")))

    async def inspect(self, container_id: str) -> ContainerInfo:
        attrs = await self._call(lambda c: c.containers.get(container_id).attrs)
        return container_info(attrs)

    async def pause(self, container_id: str) -> None:
        await self._call(lambda c: _post(c, _container_path(container_id, "/pause")))

    async def unpause(self, container_id: str) -> None:
        await self._call(lambda c: _post(c, _container_path(container_id, "/unpause")))

    async def remove(self, container_id: str) -> None:
        def remove(client: PodmanClient) -> None:
            # force kills a running or paused container first; timeout=0 makes that
            # SIGKILL at once instead of SIGTERM and a 10 s wait.
            params = {"force": True, "timeout": 0, "volumes": True}
            client.api.delete(_container_path(container_id), params=params).raise_for_status()

        with suppress(ContainerNotFound):
            await self._call(remove)

    async def stats(self, container_id: str) -> ContainerStats:
        def stats(client: PodmanClient) -> tuple[Any, Any]:
            params = {"containers": container_id, "stream": False}
            usage = client.api.get("/containers/stats", params=params)
            usage.raise_for_status()
            # size=true makes Podman measure the writable layer (SizeRw). It measures the
            # whole root filesystem too, about 0.1 s of the call: fine for on-demand metrics.
            inspected = client.api.get(_container_path(container_id, "/json"), params={"size": True})
            inspected.raise_for_status()
            return usage.json(), inspected.json()

        report, attrs = await self._call(stats)
        return container_stats(container_id, report, attrs)

    async def image_exists(self, image: str) -> bool:
        return bool(await self._call(lambda c: c.images.exists(image)))

    async def logs(self, container_id: str, tail: int) -> bytes:
        def logs_(client: PodmanClient) -> bytes:
            params = {"stdout": "true", "stderr": "true", "tail": str(tail)}
            response = client.api.get(_container_path(container_id, "/logs"), params=params)
            response.raise_for_status()
            return unframe(response.content)

        return await self._call(logs_)

    async def exec(self, container_id: str, command: list[str]) -> tuple[int, bytes]:
        def exec_(client: PodmanClient) -> tuple[int, bytes]:
            body = {"Cmd": command, "AttachStdout": True, "AttachStderr": True, "Tty": False}
            created = client.api.post(_container_path(container_id, "/exec"), data=json.dumps(body))
            created.raise_for_status()
            exec_id = created.json()["Id"]
            started = client.api.post(f"/exec/{exec_id}/start", data=json.dumps({"Detach": False, "Tty": False}))
            started.raise_for_status()
            inspected = client.api.get(f"/exec/{exec_id}/json")
            inspected.raise_for_status()
            exit_code = inspected.json().get("ExitCode")
            return (exit_code if isinstance(exit_code, int) else -1), unframe(started.content)

        return await self._call(exec_)

    # Last in the class: a method named `list` shadows the builtin in the
    # annotations of every method after it.
    async def list(self, labels: dict[str, str]) -> list[ContainerInfo]:
        filters = json.dumps({"label": [f"{k}={v}" for k, v in sorted(labels.items())]})

        def list_ids(client: PodmanClient) -> list[str]:
            response = client.api.get("/containers/json", params={"all": True, "filters": filters})
            response.raise_for_status()
            return [str(entry["Id"]) for entry in response.json()]

        # The listing has no addresses; inspect each for its IP.
        infos = []
        for container_id in await self._call(list_ids):
            # Skipped when removed between the listing and the inspect.
            with suppress(ContainerNotFound):
                infos.append(await self.inspect(container_id))
        return infos


if TYPE_CHECKING:
    # mypy proves the class satisfies the interface.
    _conforms: type[Runtime] = PodmanRuntime


def _container_path(container_id: str, action: str = "") -> str:
    return f"/containers/{quote(container_id, safe='')}{action}"


def _post(client: PodmanClient, path: str) -> None:
    client.api.post(path).raise_for_status()


# -- translation: podman-py errors -> ours -------------------------------------------


@contextmanager
def _podman_errors(base_url: str) -> Iterator[None]:
    """The one place podman-py's and requests' exceptions become the project's."""
    try:
        yield
    except PodmanImageNotFound as exc:
        raise ImageNotFound(_describe(exc)) from exc
    except APIError as exc:
        if exc.response is None:
            # podman-py wraps connection failures (and timeouts) in a response-less
            # APIError saying only "GET operation failed"; the cause says why.
            raise RuntimeFailure(f"Podman service at {base_url} unreachable: {exc.__cause__ or exc}") from exc
        message = _describe(exc)
        # Podman 4.3 answers a create naming a missing image with 500, not 404.
        if "image not known" in message:
            raise ImageNotFound(message) from exc
        if exc.status_code == 404:
            raise ContainerNotFound(message) from exc
        raise RuntimeFailure(message) from exc
    except requests.RequestException as exc:
        raise RuntimeFailure(f"Podman service at {base_url} unreachable: {exc}") from exc
    except PodmanError as exc:
        raise RuntimeFailure(str(exc)) from exc


def _describe(exc: APIError) -> str:
    # `explanation` holds Podman's own sentence; str(exc) only the HTTP reason.
    return str(exc.explanation or exc)


# -- pure mapping between our types and Podman's JSON -----------------------------------


def create_arguments(spec: ContainerSpec) -> dict[str, Any]:
    """podman-py `containers.create` keyword arguments for a spec (image and command aside)."""
    if spec.cpu_count <= 0 or spec.memory_mb <= 0:
        raise ValueError(f"cpu_count and memory_mb must be positive: {spec!r}")
    memory = spec.memory_mb * _MIB
    kwargs: dict[str, Any] = {
        "name": spec.name,
        "hostname": spec.hostname,
        "environment": dict(spec.env),
        "labels": dict(spec.labels),
        "network_mode": "bridge",
        "cpu_period": _CPU_PERIOD_US,
        "cpu_quota": max(1000, round(spec.cpu_count * _CPU_PERIOD_US)),
        "mem_limit": memory,
        # Memory plus swap equal to memory: no swap on top of the limit.
        "memswap_limit": memory,
    }
    mounts = [
        {"type": "bind", "source": str(source), "target": target, "read_only": True}
        for source, target in ((spec.agent_dir, AGENT_MOUNT), (spec.vendor_dir, VENDOR_MOUNT))
        if source is not None
    ]
    if mounts:
        kwargs["mounts"] = mounts
    return kwargs


def container_info(attrs: Mapping[str, Any]) -> ContainerInfo:
    """Our view of a `GET /containers/{id}/json` answer."""
    config = attrs.get("Config") or {}
    state = str((attrs.get("State") or {}).get("Status", "unknown"))
    # A container that has exited ("stopped" until Podman's cleanup, then "exited")
    # can still show its last address, which nothing answers on any more.
    ip = container_ip(attrs.get("NetworkSettings") or {}) if state in ("running", "paused") else None
    return ContainerInfo(
        id=str(attrs["Id"]),
        name=str(attrs.get("Name", "")).lstrip("/"),
        state=state,
        ip=ip,
        labels=dict(config.get("Labels") or {}),
    )


def container_ip(network_settings: Mapping[str, Any]) -> str | None:
    """The container's address on its (bridge) network; None when it has none (not running)."""
    for network in (network_settings.get("Networks") or {}).values():
        if network and network.get("IPAddress"):
            return str(network["IPAddress"])
    return str(network_settings.get("IPAddress") or "") or None


def container_stats(container_id: str, report: Any, attrs: Mapping[str, Any]) -> ContainerStats:
    """Our view of a one-shot `GET /containers/stats` answer and a sized inspect."""
    if not isinstance(report, Mapping):
        raise RuntimeFailure(f"unexpected stats answer for {container_id}: {report!r}")
    if report.get("Error"):
        raise RuntimeFailure(f"stats for {container_id}: {report['Error']}")
    entries = report.get("Stats") or []
    if not entries:
        raise RuntimeFailure(f"no stats for {container_id} (is it running?)")
    entry = entries[0]
    return ContainerStats(
        cpu_used_pct=float(entry.get("CPU") or 0.0),
        mem_used=int(entry.get("MemUsage") or 0),
        mem_total=int(entry.get("MemLimit") or 0),
        disk_used=int(attrs.get("SizeRw") or 0),
    )


_FRAME_HEADER = struct.Struct(">BxxxI")


def unframe(data: bytes) -> bytes:
    """Join the payloads of Docker's multiplexed stream (8-byte header per frame), in order.

    Anything that does not parse as frames is returned as it is: output is for
    people and tests, and raw bytes beat an error.
    """
    out = bytearray()
    offset = 0
    while offset < len(data):
        if len(data) - offset < _FRAME_HEADER.size:
            return data
        stream, size = _FRAME_HEADER.unpack_from(data, offset)
        start = offset + _FRAME_HEADER.size
        if stream > 2 or data[offset + 1 : offset + 4] != b"\0\0\0" or start + size > len(data):
            return data
        out += data[start : start + size]
        offset = start + size
    return bytes(out)
