"""The Podman API service the driver talks to: reuse one, or run our own.

podman-py speaks HTTP to `podman system service`. The appliance runs that service
itself, on a socket of its own and with the project's containers.conf (runc,
ulimits below the host's hard limits, cgroupfs, file events), rather than relying
on a system-wide podman.socket that may not exist or may be configured otherwise.

    async with podman_service(socket_path, default_containers_conf()) as url:
        runtime = PodmanRuntime(url)
        ...

A service already answering on the socket (left running by an appliance that was
killed) is reused and left running on exit; one started here is terminated on exit.
Containers survive either way: each has its own conmon, not a child of the service.
"""

from __future__ import annotations

import os
import subprocess
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from controlplane.runtime.base import GVISOR, RUNC, RuntimeFailure
from controlplane.runtime.podman_runtime import GVISOR_OCI_RUNTIME

# Longest path a unix socket address can hold (sun_path is 108 bytes with a NUL).
_MAX_SOCKET_PATH = 107
_PING_TIMEOUT = 2.0
_STOP_GRACE = 5.0


def default_containers_conf() -> Path:
    """`<repo>/podman/containers.conf`, found from this package (installed editable)."""
    # controlplane/runtime/service.py -> parents[2] is the repository root.
    return Path(__file__).resolve().parents[2] / "podman" / "containers.conf"


def runsc_paths(containers_conf: Path) -> list[Path]:
    """The programs containers.conf lists for the runtime "runsc" (podman_runtime's gvisor)."""
    try:
        conf = tomllib.loads(containers_conf.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return []
    paths = conf.get("engine", {}).get("runtimes", {}).get("runsc", [])
    return [Path(p) for p in paths if isinstance(p, str)] if isinstance(paths, list) else []


async def available_runtimes(containers_conf: Path | None = None, *, timeout: float = 10.0) -> frozenset[str]:
    """The sandbox runtimes this machine can run: runc always; gvisor when the runsc
    that containers.conf names is there and answers `--version` (runsc is installed
    by `make setup`, and Podman would only say so when a sandbox is created)."""
    conf = containers_conf if containers_conf is not None else default_containers_conf()
    found = [p for p in runsc_paths(conf) if os.access(p, os.X_OK)]
    if not found:
        return frozenset({RUNC})
    with trio.move_on_after(timeout):
        try:
            done = await trio.run_process(
                [os.fspath(found[0]), "--version"], capture_stdout=True, capture_stderr=True, check=False
            )
        except OSError:
            return frozenset({RUNC})
        if done.returncode == 0:
            return frozenset({RUNC, GVISOR})
    return frozenset({RUNC})


async def ping(socket_path: Path, *, timeout: float = _PING_TIMEOUT) -> bool:
    """True when a Podman API service answers `GET /_ping` on this socket."""
    with trio.move_on_after(timeout):
        try:
            stream = await trio.open_unix_socket(os.fspath(socket_path))
        except OSError:
            return False
        async with stream:
            try:
                await stream.send_all(b"GET /_ping HTTP/1.0\r\nHost: podman\r\n\r\n")
                response = b""
                # HTTP/1.0: the service closes the connection after the body.
                while chunk := await stream.receive_some(4096):
                    response += chunk
                    if len(response) > 65536:
                        break
            except (OSError, trio.BrokenResourceError):
                return False
        status_line = response.split(b"\r\n", 1)[0]
        return status_line.startswith(b"HTTP/1.") and status_line.split(b" ")[1:2] == [b"200"]
    return False


@asynccontextmanager
async def podman_service(
    socket_path: Path,
    containers_conf: Path | None = None,
    *,
    start_timeout: float = 20.0,
    log_path: Path | None = None,
    oci_runtime: str | None = None,
) -> AsyncIterator[str]:
    """Yield the `unix://` URL of a live Podman API service on `socket_path`.

    `log_path` receives the service's own output (default: `<socket>.log` beside
    the socket); its tail is quoted when the service fails to come up.
    `oci_runtime` (a name from containers.conf) is the runtime of the containers
    it creates, instead of containers.conf's default.
    """
    socket_path = socket_path.absolute()
    url = f"unix://{socket_path}"
    if len(os.fsencode(socket_path)) > _MAX_SOCKET_PATH:
        raise RuntimeFailure(f"socket path is too long for a unix socket: {socket_path}")
    if await ping(socket_path):
        yield url
        return

    conf = containers_conf if containers_conf is not None else default_containers_conf()
    if not conf.is_file():
        raise RuntimeFailure(f"Podman configuration {conf} is missing; run `make setup`")
    log_path = log_path or socket_path.with_name(socket_path.name + ".log")
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    # A socket file nobody answers on is left by a service that died; Podman
    # would fail to bind over it.
    socket_path.unlink(missing_ok=True)

    env = {**os.environ, "CONTAINERS_CONF": os.fspath(conf)}
    with open(log_path, "ab") as log_file:
        # The log is appended to across runs; errors quote only this run's part.
        log_start = log_file.tell()
        try:
            process = await trio.lowlevel.open_process(
                ["podman", *(["--runtime", oci_runtime] if oci_runtime else []), "system", "service", "--time=0", url],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                # Its own session: a Ctrl-C in the appliance's terminal must not
                # kill the service under requests still in flight; we stop it.
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise RuntimeFailure("podman is not installed; run `make setup`") from exc
    try:
        await _wait_until_answering(process, socket_path, _LogTail(log_path, log_start), start_timeout)
        yield url
    finally:
        # Shielded: this runs during cancellation too, and an orphaned service
        # would hold the socket (harmless, the next start reuses it, but untidy).
        with trio.CancelScope(shield=True):
            await _stop(process)


@asynccontextmanager
async def gvisor_service(
    socket_path: Path, runtimes: frozenset[str], containers_conf: Path | None = None
) -> AsyncIterator[str | None]:
    """The URL of a second Podman API service, beside the one on `socket_path`, that
    creates its containers on runsc; None when gvisor is not in `runtimes`.

    Podman 4.3's API ignores a create's own runtime (`oci_runtime`; the compat
    API's HostConfig.Runtime too): only the service's `--runtime` decides. The
    containers it creates are managed from the main service like any other (it
    knows runsc from containers.conf); only their create goes through this one.
    """
    if GVISOR not in runtimes:
        yield None
        return
    gvisor_socket = socket_path.with_name(socket_path.name + ".gvisor")
    async with podman_service(gvisor_socket, containers_conf, oci_runtime=GVISOR_OCI_RUNTIME) as url:
        yield url


async def _wait_until_answering(process: trio.Process, socket_path: Path, log: _LogTail, timeout: float) -> None:
    deadline = trio.current_time() + timeout
    while trio.current_time() < deadline:
        if process.returncode is not None:
            raise RuntimeFailure(f"podman system service exited with status {process.returncode}: {log.read()}")
        if await ping(socket_path, timeout=max(0.1, min(_PING_TIMEOUT, deadline - trio.current_time()))):
            return
        await trio.sleep(0.05)
    raise RuntimeFailure(f"podman system service did not answer on {socket_path} within {timeout:.0f} s: {log.read()}")


async def _stop(process: trio.Process) -> None:
    if process.returncode is None:
        process.terminate()
        with trio.move_on_after(_STOP_GRACE):
            await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()


@dataclass(frozen=True)
class _LogTail:
    path: Path
    start: int

    def read(self, limit: int = 2000) -> str:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.start)
                text = f.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return text[-limit:].strip() or "(empty log)"
