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
  still in it, and addresses the container by name;
- commit and load: podman-py cannot give them a longer timeout.

Builds do not go through the service at all: Podman 4.3's build API (libpod and
compat alike) runs RUN steps in the host's network namespace whatever `networkmode`
says, where they could reach the appliance's own services on loopback. The
`podman build` command honours `--network none`, so builds run that.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import requests
import trio
from podman.client import PodmanClient
from podman.errors import APIError, PodmanError
from podman.errors import ImageNotFound as PodmanImageNotFound

from controlplane.runtime import disklimit, imagearchive
from controlplane.runtime.base import (
    AGENT_MOUNT,
    DEFAULT_STORAGE_GB,
    GVISOR,
    RUNTIMES,
    VENDOR_MOUNT,
    ContainerInfo,
    ContainerNotFound,
    ContainerSpec,
    ContainerStats,
    ImageNotFound,
    NetworkInfo,
    Runtime,
    RuntimeFailure,
)

T = TypeVar("T")

# CFS period for CPU limits; the quota is cpu_count periods' worth of CPU time.
_CPU_PERIOD_US = 100_000
_MIB = 1024 * 1024
# Podman's name for the gvisor runtime: podman/containers.conf's [engine.runtimes].
GVISOR_OCI_RUNTIME = "runsc"
# Builds, commits and loads take minutes, not seconds: how long one may go without a byte.
_IMAGE_READ_TIMEOUT = 1800.0
# Uids and gids 0..65535 inside each sandbox, every sandbox on a range of its own
# (from the `containers` entries of /etc/subuid and /etc/subgid, see scripts/setup.sh).
_USERNS_SIZE = 65536

# The capabilities a sandbox keeps, all others dropped (Podman's defaults also give
# AUDIT_WRITE, MKNOD, NET_RAW, SETFCAP, SETPCAP and SYS_CHROOT). The agent runs as
# root in the sandbox; people also run commands as root there (apt, dpkg, pip).
# These hold only inside the sandbox's own user namespace.
SANDBOX_CAPABILITIES = (
    # The agent starts processes as other users: setgid/setgroups, and acting as a
    # user for file operations (setegid, seteuid).
    "SETGID",
    "SETUID",
    # The agent gives a terminal to the user it starts it for (fchown of the PTY);
    # root's chown, as in tar and dpkg.
    "CHOWN",
    # The agent signals processes it started as other users (cancel, timeouts, hangup).
    "KILL",
    # Root reads and writes any file: the agent acting for root writes into users'
    # homes (without it the SDK's file calls into /home/user fail), so do apt and pip.
    "DAC_OVERRIDE",
    # Root may chmod or touch files it does not own, and setgid folders keep their
    # bit: what root is expected to do (dpkg, tar -x, cp -p). The agent's own test
    # suites pass without these two and NET_BIND_SERVICE.
    "FOWNER",
    "FSETID",
    # Servers in the sandbox may listen on ports below 1024 (80, 443) in the
    # sandbox's own network namespace; the agent's own port, 8888, does not need it.
    "NET_BIND_SERVICE",
)


class PodmanRuntime:
    """`Runtime` backed by a Podman API service at `base_url` (`unix:///...`).

    `gvisor_url`: a service started with `--runtime runsc` (service.gvisor_service),
    which creates the containers of gvisor specs; None: such a create fails.
    """

    def __init__(
        self,
        base_url: str,
        *,
        gvisor_url: str | None = None,
        max_concurrency: int = 8,
        timeout: float = 60.0,
        containers_conf: Path | None = None,
    ) -> None:
        self.base_url = base_url
        # What `podman build` runs with (the service's own configuration).
        self.containers_conf = containers_conf or Path(__file__).resolve().parents[2] / "podman" / "containers.conf"
        self.gvisor_url = gvisor_url
        self._timeout = timeout
        self._limiter = trio.CapacityLimiter(max_concurrency)
        # Idle clients by service URL; list.pop and list.append are atomic, so threads share them safely.
        self._idle: dict[str, list[PodmanClient]] = {base_url: []}
        if gvisor_url is not None:
            self._idle[gvisor_url] = []
        # Created here and not started yet: where their layer and run folder are.
        self._fresh: dict[str, _Folders] = {}
        # One load at a time: its check of the names an archive claims holds until it is named.
        self._load_lock = trio.Lock()

    def close(self) -> None:
        """Close the pooled HTTP connections. Calls still running keep their client."""
        for idle in self._idle.values():
            while idle:
                idle.pop().api.close()

    # -- plumbing ------------------------------------------------------------------

    async def _call(self, fn: Callable[[PodmanClient], T], url: str | None = None) -> T:
        url = url or self.base_url
        with _podman_errors(url):
            return await trio.to_thread.run_sync(self._with_client, fn, url, limiter=self._limiter)

    def _with_client(self, fn: Callable[[PodmanClient], T], url: str) -> T:
        idle = self._idle[url]
        try:
            client = idle.pop()
        except IndexError:
            client = PodmanClient(base_url=url, timeout=self._timeout)
        try:
            return fn(client)
        finally:
            idle.append(client)

    def _create_url(self, spec: ContainerSpec) -> str:
        if spec.runtime != GVISOR:
            return self.base_url
        if self.gvisor_url is None:
            raise RuntimeFailure("this driver has no Podman service for gvisor (runsc) sandboxes")
        return self.gvisor_url

    # -- Runtime -------------------------------------------------------------------

    async def create(self, spec: ContainerSpec) -> str:
        kwargs = create_arguments(spec)

        def create(client: PodmanClient) -> tuple[str, _Folders]:
            container = client.containers.create(spec.image, spec.command, **kwargs)
            try:
                folders = _Folders.of(container.attrs)
                disklimit.attach(folders.layer, spec.storage_gb or DEFAULT_STORAGE_GB)
                return str(container.id), folders
            except BaseException:
                # A failed create leaves no container behind.
                with suppress(APIError, requests.RequestException):
                    _delete(client, str(container.id))
                raise

        container_id, folders = await self._call(create, self._create_url(spec))
        self._fresh[container_id] = folders
        return container_id

    async def start(self, container_id: str) -> None:
        known = self._fresh.pop(container_id, None)

        def start(client: PodmanClient) -> None:
            # Not created by this process (a restart of the appliance or the host): look.
            folders = known or _Folders.of(client.containers.get(container_id).attrs)
            disklimit.ensure_mounted(folders.layer)
            # init writes /etc/hosts and the others; they are sealed before anything
            # runs inside. 304 (already initialised, or running) is not an error.
            _post(client, _container_path(container_id, "/init"))
            disklimit.seal(folders.run)
            _post(client, _container_path(container_id, "/start"))

        await self._call(start)

    async def inspect(self, container_id: str) -> ContainerInfo:
        attrs = await self._call(lambda c: c.containers.get(container_id).attrs)
        return container_info(attrs)

    async def pause(self, container_id: str) -> None:
        await self._call(lambda c: _post(c, _container_path(container_id, "/pause")))

    async def unpause(self, container_id: str) -> None:
        await self._call(lambda c: _post(c, _container_path(container_id, "/unpause")))

    async def remove(self, container_id: str) -> None:
        # Podman's removal also unmounts the layer's image and deletes it (disklimit).
        self._fresh.pop(container_id, None)

        def remove(client: PodmanClient) -> None:
            # Podman 4.3, with a user namespace per container and a network with DNS,
            # now and then leaves a stopped container's /dev/shm mounted; its removal
            # then fails half-way ("unlinkat .../userdata/shm: device or resource
            # busy", upstream's unlinkat/EBUSY race) and leaves a storage-only
            # container behind. So: stop, let go of what the stop left, then remove.
            stopped = client.api.post(_container_path(container_id, "/stop"), params={"timeout": 0})
            if stopped.status_code == 404:
                return
            # Anything else (paused, already stopped): the forced removal copes.
            inspected = client.api.get(_container_path(container_id, "/json"))
            if inspected.ok and (inspected.json().get("State") or {}).get("Status") in ("exited", "stopped"):
                disklimit.release_shm(inspected.json())
            _delete(client, container_id)

        with suppress(ContainerNotFound):
            await self._call(remove)

    async def stats(self, container_id: str, *, disk: bool = True) -> ContainerStats:
        def stats(client: PodmanClient) -> tuple[Any, Any]:
            params = {"containers": container_id, "stream": False}
            usage = client.api.get("/containers/stats", params=params)
            usage.raise_for_status()
            if not disk:
                return usage.json(), {}
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

    async def ensure_network(self, name: str, *, interface: str, labels: dict[str, str]) -> NetworkInfo:
        def ensure(client: PodmanClient) -> Any:
            path = f"/networks/{quote(name, safe='')}/json"
            found = client.api.get(path)
            # Made by an earlier version with aardvark-dns, which holds port 53 on the
            # gateway address that the appliance's own resolver needs. Made again when
            # nothing uses it; otherwise the resolver's bind says what to do.
            stale = found.ok and found.json().get("dns_enabled")
            if stale and client.api.delete(f"/networks/{quote(name, safe='')}").ok:
                found = client.api.get(path)
            if found.status_code == 404:
                # No subnet given: Podman takes a free one from its pools (10.89.x.0/24, ...).
                # podman-py's networks.create cannot name the bridge device.
                body = {
                    "name": name,
                    "driver": "bridge",
                    "network_interface": interface,
                    # No aardvark-dns: sandboxes resolve through the appliance's own
                    # resolver on the gateway address (controlplane/network/resolver.py).
                    "dns_enabled": False,
                    "labels": labels,
                }
                created = client.api.post("/networks/create", data=json.dumps(body))
                # 409: another process created it meanwhile; theirs is as good.
                if created.status_code != 409:
                    created.raise_for_status()
                    return created.json()
                found = client.api.get(path)
            found.raise_for_status()
            return found.json()

        return network_info(await self._call(ensure))

    async def build(
        self, containerfile: str, tag: str, *, labels: dict[str, str], on_line: Callable[[str], None]
    ) -> str:
        with tempfile.TemporaryDirectory(prefix="scalebox-build-") as folder:
            context = Path(folder, "context")
            context.mkdir()
            (context / "Containerfile").write_text(containerfile)
            iidfile = Path(folder, "image-id")
            command = build_command(tag=tag, labels=labels, context=context, iidfile=iidfile)
            env = {**os.environ, "CONTAINERS_CONF": os.fspath(self.containers_conf)}
            last = ""
            process = await trio.lowlevel.open_process(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
            )
            try:
                assert process.stdout is not None
                with trio.fail_after(_IMAGE_READ_TIMEOUT):
                    pending = b""
                    async for chunk in process.stdout:
                        *lines, pending = (pending + chunk).split(b"\n")
                        for line in lines:
                            last = line.decode("utf-8", "replace").rstrip()
                            on_line(last)
                    if pending:
                        last = pending.decode("utf-8", "replace").rstrip()
                        on_line(last)
                    code = await process.wait()
            except trio.TooSlowError:
                raise RuntimeFailure(f"the build took longer than {_IMAGE_READ_TIMEOUT:.0f} s") from None
            finally:
                with trio.CancelScope(shield=True):
                    if process.returncode is None:
                        process.kill()
                        await process.wait()
            if code != 0:
                raise RuntimeFailure(f"the build failed (podman build exit status {code}): {last[:500]}")
            return iidfile.read_text().strip().removeprefix("sha256:")

    async def commit(
        self, container_id: str, tag: str, *, labels: dict[str, str], changes: list[str], pause: bool
    ) -> str:
        repo, tag_name = split_reference(tag)
        every_change = [*changes, *(f"LABEL {k}={v}" for k, v in sorted(labels.items()))]

        def commit(client: PodmanClient) -> tuple[str, IdMaps]:
            inspected = client.api.get(_container_path(container_id, "/json"))
            inspected.raise_for_status()
            maps = id_maps((inspected.json().get("HostConfig") or {}).get("IDMappings") or {})
            params = {
                "container": container_id,
                # With a user namespace the image is made again below; this one stays untagged.
                **({} if maps.shifted else {"repo": repo, "tag": tag_name}),
                "changes": every_change,
                "pause": pause,
                "format": "oci",
            }
            response = client.api.post("/commit", params=params, timeout=(self._timeout, _IMAGE_READ_TIMEOUT))
            response.raise_for_status()
            return str(response.json()["Id"]), maps

        image_id, maps = await self._call(commit)
        if not maps.shifted:
            return image_id
        # Podman 4.3 commits a user-namespaced container's files with their host owners
        # (2147483647 and up), which no other sandbox's namespace maps: root's files would
        # be unreadable in the template's sandboxes. One build step gives them back their
        # owners inside (python3 is in every sandbox image: the agent runs on it).
        try:
            return await self.build(
                unshift_containerfile(image_id, maps), tag, labels=labels, on_line=lambda _line: None
            )
        finally:
            with suppress(RuntimeFailure, ContainerNotFound):
                await self.remove_image(image_id)

    async def load(self, archive: Path, tag: str) -> str:
        claimed = await trio.to_thread.run_sync(imagearchive.inspect_archive, archive)

        def load(client: PodmanClient) -> str:
            kept: set[str] = set()
            for name in claimed.names:
                found = client.api.get(f"/images/{quote(name, safe='')}/json")
                if found.status_code == 404:
                    continue
                found.raise_for_status()
                if str(found.json().get("Id")) != claimed.image_id:
                    raise RuntimeFailure(
                        f"the archive names its image {name}, which is another image on this appliance; "
                        "save it under another name (or by image id) and import that"
                    )
                kept.add(name)
            with open(archive, "rb") as f:
                loaded = client.api.post(
                    "/images/load",
                    data=f,
                    headers={"Content-Type": "application/x-tar"},
                    timeout=(self._timeout, _IMAGE_READ_TIMEOUT),
                )
            loaded.raise_for_status()
            names = [str(n) for n in loaded.json().get("Names") or []]
            repo, tag_name = split_reference(tag)
            _post_params(client, f"/images/{claimed.image_id}/tag", {"repo": repo, "tag": tag_name})
            # The archive's own names go again, unless they were there before (the same image).
            for name in names:
                if name in kept or name.startswith("sha256:") or name == claimed.image_id:
                    continue
                name_repo, name_tag = split_reference(name)
                with suppress(APIError):
                    _post_params(client, f"/images/{claimed.image_id}/untag", {"repo": name_repo, "tag": name_tag})
            return claimed.image_id

        async with self._load_lock:
            return await self._call(load)

    async def tag(self, image: str, new: str) -> None:
        repo, tag_name = split_reference(new)
        await self._call(
            lambda c: _post_params(c, f"/images/{quote(image, safe='')}/tag", {"repo": repo, "tag": tag_name})
        )

    async def remove_image(self, image: str) -> None:
        def remove(client: PodmanClient) -> None:
            # Not forced: a name shared with another image's (an import of the base
            # image itself) is only untagged, and an image in use stays.
            response = client.api.delete(f"/images/{quote(image, safe='')}")
            if response.status_code != 404:
                response.raise_for_status()

        await self._call(remove)

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


@dataclass(frozen=True)
class _Folders:
    """Where a container's writable layer and its run folder are on the host (disklimit)."""

    layer: disklimit.LayerPaths
    run: Path

    @classmethod
    def of(cls, attrs: Mapping[str, Any]) -> _Folders:
        return cls(layer=disklimit.layer_paths(attrs), run=disklimit.run_dir(attrs))


def _container_path(container_id: str, action: str = "") -> str:
    return f"/containers/{quote(container_id, safe='')}{action}"


def _post(client: PodmanClient, path: str) -> None:
    client.api.post(path).raise_for_status()


def _post_params(client: PodmanClient, path: str, params: dict[str, str]) -> None:
    client.api.post(path, params=params).raise_for_status()


def _delete(client: PodmanClient, container_id: str) -> None:
    # force kills a running or paused container first; timeout=0 makes that
    # SIGKILL at once instead of SIGTERM and a 10 s wait.
    params = {"force": True, "timeout": 0, "volumes": True}
    client.api.delete(_container_path(container_id), params=params).raise_for_status()


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
        **({"networks": {spec.network: {}}} if spec.network else {}),
        **({"dns": list(spec.dns)} if spec.dns else {}),
        "cpu_period": _CPU_PERIOD_US,
        "cpu_quota": max(1000, round(spec.cpu_count * _CPU_PERIOD_US)),
        "mem_limit": memory,
        # Memory plus swap equal to memory: no swap on top of the limit.
        "memswap_limit": memory,
        "pids_limit": spec.pids_limit,
        # Hardening (docs/security.md). Podman's defaults stay as they are for the
        # rest: its seccomp profile, masked and read-only /proc and /sys paths, no
        # host devices, not privileged; nothing here loosens them.
        "cap_drop": ["ALL"],
        "cap_add": list(SANDBOX_CAPABILITIES),
        # setuid and setgid bits and file capabilities grant nothing on exec.
        "no_new_privileges": True,
        # A user namespace of its own per sandbox: root inside is an unprivileged uid
        # on the host, and no two sandboxes share a uid. Podman's API ignores
        # userns "auto" unless idmappings asks for it too (the CLI sets both).
        "userns_mode": "auto",
        "idmappings": {"AutoUserNs": True, "AutoUserNsOpts": {"Size": _USERNS_SIZE}},
    }
    mounts = [
        {"type": "bind", "source": str(source), "target": target, "read_only": True}
        for source, target in ((spec.agent_dir, AGENT_MOUNT), (spec.vendor_dir, VENDOR_MOUNT))
        if source is not None
    ]
    if mounts:
        kwargs["mounts"] = mounts
    if spec.runtime == GVISOR:
        # Podman 4.3 ignores it: the create goes to a service started with
        # `--runtime runsc` (PodmanRuntime.gvisor_url). Later versions honour it.
        kwargs["runtime"] = GVISOR_OCI_RUNTIME
        # Debian's runsc (20221219) cannot start a sandbox in a Podman user namespace
        # ("error setting up chroot: error converting mounts: operation not permitted").
        # gVisor's own kernel stands between the sandbox's root and the host's kernel
        # instead; runsc also runs its sandbox in a user namespace of its own.
        kwargs.pop("userns_mode", None)
        kwargs.pop("idmappings", None)
    elif spec.runtime is not None:
        raise ValueError(f"unknown runtime {spec.runtime!r}; use one of {RUNTIMES}")
    return kwargs


@dataclass(frozen=True)
class IdMaps:
    """A container's user namespace: (inside, host, size) ranges for uids and gids."""

    uids: tuple[tuple[int, int, int], ...] = ()
    gids: tuple[tuple[int, int, int], ...] = ()

    @property
    def shifted(self) -> bool:
        return any(inside != host for inside, host, _ in (*self.uids, *self.gids))


def id_maps(mappings: Mapping[str, Any]) -> IdMaps:
    """From inspect's HostConfig.IDMappings: {"UidMap": ["0:2147549183:65534"], "GidMap": [...]}."""

    def ranges(values: Any) -> tuple[tuple[int, int, int], ...]:
        out = []
        for value in values or []:
            inside, host, size = (int(part) for part in str(value).split(":"))
            out.append((inside, host, size))
        return tuple(out)

    return IdMaps(uids=ranges(mappings.get("UidMap")), gids=ranges(mappings.get("GidMap")))


# Run in the build container (as the host's root, no user namespace): every file owned
# by a host id of the sandbox's namespace goes back to the id it had inside.
_UNSHIFT = """
import json, os, sys
uids, gids = json.loads(sys.argv[1]), json.loads(sys.argv[2])
def back(value, ranges):
    for inside, host, size in ranges:
        if host <= value < host + size:
            return inside + value - host
    return value
for top, dirs, files in os.walk("/"):
    if top == "/":
        dirs[:] = [d for d in dirs if d not in ("proc", "sys", "dev")]
    for name in [""] + dirs + files:
        path = os.path.join(top, name) if name else top
        try:
            st = os.lstat(path)
            uid, gid = back(st.st_uid, uids), back(st.st_gid, gids)
            if (uid, gid) != (st.st_uid, st.st_gid):
                os.lchown(path, uid, gid)
        except OSError:
            pass
"""


def unshift_containerfile(image_id: str, maps: IdMaps) -> str:
    """A one-step build over a committed image that gives files their owners inside back."""
    command = ["python3", "-c", _UNSHIFT, json.dumps(maps.uids), json.dumps(maps.gids)]
    return f"FROM {image_id}\nRUN {json.dumps(command)}\n"


def network_info(attrs: Mapping[str, Any]) -> NetworkInfo:
    """Our view of a `GET /networks/{name}/json` answer: its first IPv4 subnet."""
    for subnet in attrs.get("subnets") or []:
        cidr, gateway = str(subnet.get("subnet") or ""), str(subnet.get("gateway") or "")
        if "." in cidr and gateway:
            return NetworkInfo(
                name=str(attrs["name"]),
                interface=str(attrs.get("network_interface") or ""),
                subnet=cidr,
                gateway=gateway,
            )
    raise RuntimeFailure(f"network {attrs.get('name')!r} has no IPv4 subnet with a gateway: {attrs.get('subnets')!r}")


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
        # Nanoseconds of CPU since the container started (cgroup usage_usec).
        cpu_seconds=int(entry.get("CPUNano") or 0) / 1e9,
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


def split_reference(ref: str) -> tuple[str, str]:
    """`repo[:tag]` -> (repo, tag); a port in the registry host is not a tag."""
    repo, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        return ref, "latest"
    return repo, tag


def build_command(*, tag: str, labels: dict[str, str], context: Path, iidfile: Path) -> list[str]:
    """`podman build` of a context folder: no network for RUN steps, nothing pulled."""
    command = ["podman", "build", "--network", "none", "--pull=never", "--layers", "--force-rm"]
    command += ["--iidfile", os.fspath(iidfile), "-t", tag, "-f", os.fspath(context / "Containerfile")]
    for key, value in sorted(labels.items()):
        command += ["--label", f"{key}={value}"]
    return [*command, os.fspath(context)]
