"""The runtime driver interface: what the control plane needs from a container engine.

The lifecycle service only ever talks to a `Runtime`; `podman_runtime.PodmanRuntime`
is the real one and `fake.FakeRuntime` an in-memory stand-in for tests. Every method
is async because the real driver's calls block and run in worker threads.

Errors a driver raises::

    RuntimeFailure            the engine refused or failed an operation
     +-- ContainerNotFound    the container does not exist (any more)
     +-- ImageNotFound        the image a spec names does not exist locally
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

# The agent's code is mounted read-only here in every sandbox and run as PID 1.
AGENT_MOUNT = "/opt/scalebox/agent"
# Pure-Python packages the agent may import (h11), mounted read-only beside it:
# nothing is ever installed inside a sandbox.
VENDOR_MOUNT = "/opt/scalebox/vendor"
AGENT_PORT = 8888

# A sandbox's writable filesystem when the request leaves storage_gb at 0. Images
# are sparse: a sandbox costs the host only what it writes, up to this.
DEFAULT_STORAGE_GB = 10
# Processes and threads one sandbox may have at once: a fork bomb stops here.
# The host's kernel.pid_max is raised by `make setup` so many sandboxes fit.
DEFAULT_PIDS_LIMIT = 1024

# Sandbox runtimes, as the API names them: "runc" (the default: Linux namespaces
# and cgroups) and "gvisor" (runsc: a user-space kernel between the sandbox and the
# host's). See README.md, "The gvisor runtime".
RUNC = "runc"
GVISOR = "gvisor"
RUNTIMES = (RUNC, GVISOR)


class RuntimeFailure(Exception):
    """The container engine failed or refused an operation."""


class ContainerNotFound(RuntimeFailure):
    """The named container does not exist."""


class ImageNotFound(RuntimeFailure):
    """The image does not exist locally (nothing can be pulled on these machines)."""


@dataclass(frozen=True, kw_only=True)
class ContainerSpec:
    """Everything needed to create one sandbox container."""

    name: str
    image: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    cpu_count: float = 1.0
    memory_mb: int = 512
    hostname: str = "sandbox"
    # Host folders mounted read-only at AGENT_MOUNT and VENDOR_MOUNT.
    agent_dir: Path | None = None
    vendor_dir: Path | None = None
    pids_limit: int = DEFAULT_PIDS_LIMIT
    # Size of the sandbox's own writable filesystem, in GiB; 0: DEFAULT_STORAGE_GB.
    storage_gb: int = 0
    # The Podman network the container joins (the appliance's own bridge); None: Podman's default.
    network: str | None = None
    # Name servers written to the container's /etc/resolv.conf (the appliance's own
    # resolver, controlplane/network/resolver.py); empty: Podman's choice.
    dns: tuple[str, ...] = ()
    # One of RUNTIMES other than the engine's default; None: the default (runc).
    runtime: str | None = None


@dataclass(frozen=True, kw_only=True)
class ContainerInfo:
    id: str
    name: str
    # Podman's own words: "created", "running", "paused", "exited", "stopped", ...
    state: str
    ip: str | None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class NetworkInfo:
    """A bridge network as the firewall needs it (controlplane/network/)."""

    name: str
    # The host's bridge device.
    interface: str
    # IPv4, CIDR; the gateway is the host's address on the bridge (and the DNS server).
    subnet: str
    gateway: str


@dataclass(frozen=True, kw_only=True)
class ContainerStats:
    cpu_used_pct: float
    mem_used: int
    mem_total: int
    # Bytes in the container's writable layer (Podman's SizeRw): what the sandbox wrote;
    # 0 when not measured (stats(disk=False)).
    disk_used: int
    # CPU time the container used since it started, a cumulative counter (the meter's, usage/).
    cpu_seconds: float = 0.0


class Runtime(Protocol):
    async def create(self, spec: ContainerSpec) -> str:
        """Create (not start) a container; return its id."""
        ...

    async def start(self, container_id: str) -> None: ...

    async def inspect(self, container_id: str) -> ContainerInfo:
        """Raise ContainerNotFound when it is gone."""
        ...

    async def pause(self, container_id: str) -> None: ...

    async def unpause(self, container_id: str) -> None: ...

    async def remove(self, container_id: str) -> None:
        """Kill and remove at once; a container that is already gone is not an error."""
        ...

    async def list(self, labels: dict[str, str]) -> builtins.list[ContainerInfo]:
        """All containers (any state) carrying every one of these labels."""
        ...

    async def stats(self, container_id: str, *, disk: bool = True) -> ContainerStats:
        """disk=False skips measuring the writable layer, the slow part (the meter samples often)."""
        ...

    async def image_exists(self, image: str) -> bool: ...

    async def logs(self, container_id: str, tail: int) -> bytes:
        """The last `tail` lines the container's PID 1 (the agent, and the start command) wrote."""
        ...

    async def exec(self, container_id: str, command: builtins.list[str]) -> tuple[int, bytes]:
        """Run a command inside; return (exit code, combined output). For tests and tools."""
        ...

    async def ensure_network(self, name: str, *, interface: str, labels: dict[str, str]) -> NetworkInfo:
        """The bridge network `name`, created (with this host interface, a free IPv4 subnet
        and DNS) unless it exists; an existing one is returned as it is."""
        ...

    # -- images (user templates) ---------------------------------------------------------

    async def build(
        self, containerfile: str, tag: str, *, labels: dict[str, str], on_line: Callable[[str], None]
    ) -> str:
        """Build the image `tag` from a Containerfile alone (no other context) with no network
        for its RUN steps; return its id. `on_line` is called, in the Trio thread, with each
        line of output as it comes. RuntimeFailure carries the build's own error."""
        ...

    async def commit(
        self, container_id: str, tag: str, *, labels: dict[str, str], changes: builtins.list[str], pause: bool
    ) -> str:
        """Commit the container's files to the image `tag` with these labels and Containerfile
        instructions (`ENV K=v`, `LABEL k=v`); return its id. `pause`: freeze it meanwhile."""
        ...

    async def load(self, archive: Path, tag: str) -> str:
        """Load a docker-archive or oci-archive holding one image and name it `tag`; return its id.
        The names the archive carries are not kept, and an archive naming an existing image
        is refused rather than allowed to take that name over."""
        ...

    async def tag(self, image: str, new: str) -> None: ...

    async def remove_image(self, image: str) -> None:
        """Remove the name `image` (the image too when it was its last name); a missing one is not an error."""
        ...
