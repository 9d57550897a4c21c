"""The meter: every `interval` seconds, what each live sandbox used since the last look.

One pass (`sample_once`) reads each running sandbox's container counters (one
Podman stats call, without the costly disk measurement), turns them into usage
with the pure functions of calc.py, adds the gateway traffic reported since the
last pass, and writes it all to the hour buckets in one transaction with the new
counter readings (usage/store.py). Storage is billed on the sandbox's allocation
(storage_gb) while it is live, paused too; CPU and memory only while it runs.

Sessions, the intervals a sandbox ran, follow the lifecycle's events
(controlplane/events.py): started or resumed opens one; paused, terminated or
failed closes it. Each pass also repairs them against the sandbox table, for
events missed while the appliance was down.

What is not counted: CPU used between a sandbox's last sample and its end (at
most one interval), and a tunnel's traffic until the tunnel closes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import trio

from appliance import log
from controlplane.events import Event
from controlplane.lifecycle.service import SandboxService
from controlplane.lifecycle.states import LIVE, State
from controlplane.records import SandboxRecord
from controlplane.runtime.base import DEFAULT_STORAGE_GB, RuntimeFailure
from controlplane.usage.calc import Usage, cpu_delta, elapsed, hour_of, sample_usage
from controlplane.usage.store import Bucketed, Reading, UsageStore

DEFAULT_INTERVAL = 15.0
_OPENS = frozenset({"sandbox.started", "sandbox.resumed"})
_CLOSES = frozenset({"sandbox.paused", "sandbox.terminated", "sandbox.failed"})


class Meter:
    def __init__(
        self,
        *,
        service: SandboxService,
        usage: UsageStore,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.service = service
        self.usage = usage
        self.interval = interval
        self.clock = clock
        # sandbox id -> [bytes in, bytes out] reported by the gateways since the last pass.
        self._traffic: dict[str, list[int]] = {}
        # Counters of this process's own gateway, taken at each pass.
        self._sources: list[Callable[[], Mapping[str, tuple[int, int]]]] = []
        service.events.subscribe(self.on_event)

    # -- inputs --------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        if event.type in _OPENS:
            rec = self.service.store.get_sandbox(event.subject_id)
            if rec is not None:
                self._open(rec, event.created_at)
        elif event.type in _CLOSES:
            self.usage.close_session(event.subject_id, at=event.created_at, event=event.type)

    def add_traffic(self, counts: Mapping[str, tuple[int, int]]) -> None:
        """Bytes a gateway moved per sandbox; written at the next pass."""
        for sandbox_id, (bytes_in, bytes_out) in counts.items():
            held = self._traffic.setdefault(sandbox_id, [0, 0])
            held[0] += bytes_in
            held[1] += bytes_out

    def pull_traffic_from(self, take: Callable[[], Mapping[str, tuple[int, int]]]) -> None:
        """Take traffic from `take` at each pass (a gateway in this process: no report needed)."""
        self._sources.append(take)

    def _open(self, rec: SandboxRecord, at: float) -> None:
        self.usage.open_session(
            sandbox_id=rec.id, owner_id=rec.owner_id, cpu_count=rec.cpu_count, memory_mb=rec.memory_mb, at=at
        )

    # -- one pass ------------------------------------------------------------------

    def repair_sessions(self, now: float) -> None:
        """Close sessions of sandboxes no longer running and open one for each running without."""
        store = self.service.store
        for session in self.usage.open_sessions():
            rec = store.get_sandbox(session.sandbox_id)
            if rec is None or rec.state is not State.RUNNING:
                # It stopped while nobody listened: its row's last change is the best time known.
                at = rec.updated_at if rec is not None else now
                self.usage.close_session(session.sandbox_id, at=at, event="repaired")
        for rec in store.sandboxes_in([State.RUNNING]):
            if self.usage.open_session_of(rec.id) is None:
                self._open(rec, now)

    async def sample_once(self) -> None:
        now = self.clock()
        self.repair_sessions(now)
        readings = self.usage.readings()
        live = {rec.id: rec for rec in self.service.store.sandboxes_in(LIVE)}
        amounts: dict[str, Usage] = {}
        new_readings: dict[str, Reading] = {}
        for rec in live.values():
            got = await self._sample(rec, readings.get(rec.id), now)
            if got is not None:
                amounts[rec.id], new_readings[rec.id] = got
        for take in self._sources:
            self.add_traffic(take())
        traffic, self._traffic = self._traffic, {}
        owners = {sandbox_id: rec.owner_id for sandbox_id, rec in live.items()}
        for sandbox_id, (bytes_in, bytes_out) in traffic.items():
            if sandbox_id not in owners:
                # Traffic of a sandbox that ended since: still its owner's.
                ended = self.service.store.get_sandbox(sandbox_id)
                if ended is None:
                    continue
                owners[sandbox_id] = ended.owner_id
            amounts[sandbox_id] = amounts.get(sandbox_id, Usage()) + Usage(bytes_in=bytes_in, bytes_out=bytes_out)
        hour = hour_of(now)
        buckets = [
            Bucketed(sandbox_id=sid, owner_id=owners[sid], hour=hour, usage=u)
            for sid, u in amounts.items()
            if not u.is_zero()
        ]
        self.usage.record(buckets, new_readings)
        self.usage.forget_readings(set(readings) - set(live))

    async def _sample(self, rec: SandboxRecord, last: Reading | None, now: float) -> tuple[Usage, Reading] | None:
        storage_gb = rec.storage_gb or DEFAULT_STORAGE_GB
        last_at = last.sampled_at if last is not None else None
        if rec.state is State.RUNNING and rec.container_id is not None:
            try:
                stats = await self.service.runtime.stats(rec.container_id, disk=False)
            except RuntimeFailure as exc:
                # Its counter keeps counting: the next pass bills what this one missed.
                log.event("usage.sample_failed", sandbox_id=rec.id, error=str(exc))
                return None
            same = last is not None and last.container_id == rec.container_id
            session = self.usage.open_session_of(rec.id)
            since = session.started_at if session is not None else rec.started_at
            seconds = elapsed(now=now, last_sample=last_at, since=since, interval=self.interval)
            usage = sample_usage(
                cpu_seconds=cpu_delta(last.cpu_total if same and last is not None else None, stats.cpu_seconds),
                mem_bytes=stats.mem_used,
                storage_gb=storage_gb,
                seconds=seconds,
                running=True,
            )
            return usage, Reading(container_id=rec.container_id, cpu_total=stats.cpu_seconds, sampled_at=now)
        # Paused, or between states: it holds its storage, and its counter stays as last read.
        seconds = elapsed(now=now, last_sample=last_at, since=rec.created_at, interval=self.interval)
        usage = sample_usage(cpu_seconds=0.0, mem_bytes=0, storage_gb=storage_gb, seconds=seconds, running=False)
        kept = last or Reading(container_id=rec.container_id or "", cpu_total=0.0, sampled_at=now)
        return usage, Reading(container_id=kept.container_id, cpu_total=kept.cpu_total, sampled_at=now)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """A pass every `interval` seconds until cancelled; a pass that fails is logged and the next one tried."""
        task_status.started()
        while True:
            try:
                await self.sample_once()
            except Exception as exc:  # metering must never stop the appliance
                log.event("usage.pass_failed", error=repr(exc))
            await trio.sleep(self.interval)
