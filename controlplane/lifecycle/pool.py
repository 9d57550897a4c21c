"""The warm pool: sandboxes created, started and agent-ready before anyone asks.

A create costs about 0.15 s of Podman and agent start-up; taking a container that
already answers costs one /health round trip. Per template, the pool keeps `size`
containers that are *exactly* what a fresh create with the API's defaults makes:
the lifecycle service builds their specs (container name, hostname, labels, the
access token in the agent's environment) for a sandbox id drawn at pre-creation,
and hands a container out only to a create whose own spec would be equal to it
(see `SandboxService.create`). The id was never shown to anyone before the take,
and each container is handed out once, so nothing passes from one user to another.

Until it is taken a pooled container has no database row. So it is invisible to
the API, the gateway and the reaper, and it is debris to `reconcile`: containers
left by a killed appliance are removed on the next start, like any labelled
container without a row. On shutdown `run` removes the ones it holds.

Refills run in the background, one container at a time per template (on a small
machine, booting several at once slows the creates being served); a create never
waits for one. A failing refill (image missing, Podman down) is retried with a
growing pause. A pooled container whose agent stops answering is discarded and
replaced, by the periodic check or when a take finds it so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import trio

from appliance import log
from controlplane.lifecycle.probe import agent_healthy, wait_until_healthy
from controlplane.runtime.base import AGENT_PORT, ContainerInfo, ContainerSpec, Runtime, RuntimeFailure

# A take probes the agent before handing it out: a healthy one answers in a few
# ms; one that does not within this bound is treated as dead (the create then
# boots a fresh container instead, which is always correct).
TAKE_PROBE_TIMEOUT = 0.5
CHECK_PROBE_TIMEOUT = 2.0
FIRST_RETRY = 1.0
MAX_RETRY = 60.0


@dataclass(frozen=True, kw_only=True)
class Warm:
    """One pooled sandbox: its container runs and its agent answered."""

    template_id: str
    sandbox_id: str
    container_id: str
    ip: str


# Builds the spec of a new pooled sandbox of a template: (sandbox id, spec).
SpecMaker = Callable[[str], tuple[str, ContainerSpec]]


# -- pure decisions ---------------------------------------------------------------------


def needs_fill(size: int, ready: int) -> bool:
    """Whether a template's keeper should boot another container."""
    return ready < size


def next_retry(previous: float) -> float:
    """The pause before retrying a failed fill: doubling, bounded."""
    return min(MAX_RETRY, previous * 2) if previous else FIRST_RETRY


# -- the pool -------------------------------------------------------------------------------


class WarmPool:
    def __init__(
        self,
        *,
        runtime: Runtime,
        sizes: Mapping[str, int],
        make_spec: SpecMaker,
        ready_timeout: float,
        check_interval: float = 5.0,
    ) -> None:
        self.runtime = runtime
        self.sizes = {template: n for template, n in sizes.items() if n > 0}
        self.make_spec = make_spec
        self.ready_timeout = ready_timeout
        self.check_interval = check_interval
        # Oldest first. Only `take` and the checker remove entries, without an
        # await between finding and removing one, so no entry is handed out twice.
        self._ready: dict[str, list[Warm]] = {template: [] for template in self.sizes}
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None

    def ready(self, template_id: str) -> int:
        return len(self._ready.get(template_id, ()))

    def serves(self, template_id: str) -> bool:
        return template_id in self.sizes

    def _poke(self) -> None:
        """Wake the keepers: an entry left the pool."""
        self._changed.set()
        self._changed = trio.Event()

    # -- taking ---------------------------------------------------------------------------

    async def take(self, template_id: str) -> Warm | None:
        """A ready sandbox of this template, now owned by the caller; None when there is none."""
        entries = self._ready.get(template_id)
        while entries:
            warm = entries.pop(0)
            self._poke()
            try:
                healthy = await agent_healthy(warm.ip, AGENT_PORT, timeout=TAKE_PROBE_TIMEOUT)
            except BaseException:
                # Cancelled mid-probe (the client left): nobody owns it any more.
                await self.discard(warm, "the create was cancelled")
                raise
            if healthy:
                log.event("pool.take", template=template_id, sandbox_id=warm.sandbox_id, left=len(entries))
                return warm
            await self.discard(warm, "its agent did not answer")
        return None

    async def discard(self, warm: Warm, why: str) -> None:
        """Remove a container that left the pool unused: in the background while the pool runs."""
        log.event("pool.discard", template=warm.template_id, sandbox_id=warm.sandbox_id, reason=why)
        if self._nursery is not None:
            self._nursery.start_soon(self._remove, warm)
        else:
            await self._remove(warm)

    async def _remove(self, warm: Warm) -> None:
        # Shielded: a removal cancelled before it reached Podman would leave the
        # container running until the next start.
        with trio.CancelScope(shield=True):
            try:
                await self.runtime.remove(warm.container_id)
            except RuntimeFailure as exc:
                # reconcile removes it on the next start: it has no row.
                log.event("runtime.error", op="remove", sandbox_id=warm.sandbox_id, error=str(exc))

    # -- filling --------------------------------------------------------------------------

    async def fill_one(self, template_id: str) -> Warm:
        """Boot one sandbox of this template and add it to the pool."""
        sandbox_id, spec = self.make_spec(template_id)
        container_id: str | None = None
        try:
            container_id = await self.runtime.create(spec)
            await self.runtime.start(container_id)
            info = await self.runtime.inspect(container_id)
            if not info.ip:
                raise RuntimeFailure("the container has no IP address on the sandbox network")
            deadline = trio.current_time() + self.ready_timeout
            if not await wait_until_healthy(info.ip, AGENT_PORT, deadline=deadline):
                raise RuntimeFailure(f"the sandbox agent did not answer /health within {self.ready_timeout:.0f} s")
        except BaseException:
            # Cancelled (shutdown) or failed: leave no container behind.
            with trio.CancelScope(shield=True):
                for cid in {container_id} | {c.id for c in await self._labelled(spec)}:
                    if cid is not None:
                        with contextlib.suppress(RuntimeFailure):
                            await self.runtime.remove(cid)
            raise
        warm = Warm(template_id=template_id, sandbox_id=sandbox_id, container_id=container_id, ip=info.ip)
        self._ready.setdefault(template_id, []).append(warm)
        log.event("pool.ready", template=template_id, sandbox_id=sandbox_id, ready=self.ready(template_id))
        return warm

    async def _labelled(self, spec: ContainerSpec) -> list[ContainerInfo]:
        # A create that failed after Podman made the container returns no id;
        # the container still carries the spec's labels.
        try:
            return await self.runtime.list(spec.labels)
        except RuntimeFailure:
            return []

    async def _keep_filled(self, template_id: str) -> None:
        retry = 0.0
        while True:
            while not needs_fill(self.sizes[template_id], self.ready(template_id)):
                await self._changed.wait()
            try:
                await self.fill_one(template_id)
                retry = 0.0
            except RuntimeFailure as exc:
                retry = next_retry(retry)
                log.event("pool.fill_failed", template=template_id, error=str(exc), retry_in=retry)
                await trio.sleep(retry)

    async def _check(self) -> None:
        """Discard pooled sandboxes whose agent stopped answering, so the keepers replace them."""
        while True:
            await trio.sleep(self.check_interval)
            for entries in self._ready.values():
                for warm in list(entries):
                    if await agent_healthy(warm.ip, AGENT_PORT, timeout=CHECK_PROBE_TIMEOUT):
                        continue
                    # A take may have claimed it during the probe; then it is not ours.
                    if warm in entries:
                        entries.remove(warm)
                        self._poke()
                        await self.discard(warm, "its agent stopped answering")

    # -- running ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the pool filled until cancelled; then remove every pooled container.

        Start it after `SandboxService.reconcile`, which removes containers without
        a row: pooled ones are such containers.
        """
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for template_id in self.sizes:
                    nursery.start_soon(self._keep_filled, template_id)
                if self.sizes:
                    nursery.start_soon(self._check)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            leftovers = [warm for entries in self._ready.values() for warm in entries]
            for entries in self._ready.values():
                entries.clear()
            # Each removal shields itself; Podman's request timeout bounds them.
            with trio.CancelScope(shield=True):
                async with trio.open_nursery() as removers:
                    for warm in leftovers:
                        removers.start_soon(self._remove, warm)
            if leftovers:
                log.event("pool.drained", removed=len(leftovers))
