"""The sandbox lifecycle: create, pause, resume, timeout, terminate, and recovery.

Every state change is written to the store *before* the runtime is asked to act and
again after it answers, so after a crash the row says what was under way; `reconcile`
finishes or undoes it on the next start. Operations on one sandbox are serialised by
a per-sandbox lock; different sandboxes proceed concurrently.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio

from appliance import log
from controlplane.apikeys import random_id
from controlplane.egress import EgressLists
from controlplane.errors import ApiError, Conflict, NotFound, Unavailable
from controlplane.events import EventBus, new_event, transition_event
from controlplane.lifecycle import states
from controlplane.lifecycle.pool import Warm, WarmPool
from controlplane.lifecycle.probe import wait_until_healthy
from controlplane.lifecycle.states import LIVE, State
from controlplane.network.firewall import NetworkPolicy, NoFirewall
from controlplane.ports import PortRequest, conflict, declare, normalise
from controlplane.porttokens import MAX_TOKENS_PER_SANDBOX, TokenRequest, live, token_record
from controlplane.records import CreateRequest, SandboxRecord
from controlplane.runtime.base import (
    AGENT_MOUNT,
    AGENT_PORT,
    DEFAULT_STORAGE_GB,
    RUNC,
    ContainerInfo,
    ContainerNotFound,
    ContainerSpec,
    ContainerStats,
    Runtime,
    RuntimeFailure,
)
from controlplane.store import SandboxQuery, Store
from controlplane.templates import Template, for_create, resolve
from controlplane.tokens import mint_access_token

# How long before its timeout a running sandbox's owner is warned (an event, so a
# notification and webhooks), once per deadline.
TIMEOUT_WARNING = 60.0
LABEL_MANAGED = "io.scalebox.managed"
LABEL_INSTANCE = "io.scalebox.instance"
LABEL_SANDBOX = "io.scalebox.sandbox-id"
# Any id will do: two specs are compared for a pool match once built for the same one.
_MATCH_ID = "sbx-pool-match"
# Between two runs of a template's ready command (an exec costs about 0.1 s).
_READY_CMD_INTERVAL = 0.25


@dataclass(frozen=True, kw_only=True)
class LifecycleConfig:
    # Distinguishes this appliance's containers from another's on the same host.
    instance_id: str
    agent_dir: Path
    vendor_dir: Path | None = None
    # Signs each sandbox's access token, which its agent is given to check requests
    # that reach it directly (and signed URLs). Empty: agents check no token.
    access_secret: bytes = b""
    ready_timeout: float = 30.0
    reap_interval: float = 1.0
    # Template id -> sandboxes kept started and ready (pool.py); empty: no pool.
    warm_pool: Mapping[str, int] = field(default_factory=dict)
    # What pooled containers get: the API's defaults, which most creates use.
    pool_cpu_count: int = 1
    pool_memory_mb: int = 512
    pool_check_interval: float = 5.0
    # Host ports that tcp and tls ports may ask to be forwarded from (inclusive); None: none.
    host_ports: tuple[int, int] | None = None
    # The appliance's own Podman network (controlplane/network/); None: Podman's default.
    network: str | None = None
    # The sandboxes' name servers (the appliance's resolver on the network's gateway).
    dns: tuple[str, ...] = ()
    # The sandbox runtimes this machine can run (runtime/service.py available_runtimes).
    runtimes: frozenset[str] = frozenset({RUNC})


class SandboxService:
    def __init__(
        self,
        *,
        store: Store,
        runtime: Runtime,
        config: LifecycleConfig,
        clock: Callable[[], float] = time.time,
        network_policy: NetworkPolicy | None = None,
        events: EventBus | None = None,
    ) -> None:
        self.store = store
        # Sandbox events (controlplane/events.py): webhooks, notifications, metering listen.
        self.events = events or EventBus()
        # Sandbox id -> the timeout_at it was last warned about (sandbox.timeout_warning).
        self._warned: dict[str, float] = {}
        self.runtime = runtime
        self.config = config
        self.clock = clock
        # Told after a sandbox's row gains or loses its address (the firewall's per-sandbox rules).
        self.network_policy: NetworkPolicy = network_policy or NoFirewall()
        self._locks: dict[str, trio.Lock] = {}
        self._nursery: trio.Nursery | None = None
        self.pool = WarmPool(
            runtime=runtime,
            sizes=config.warm_pool,
            make_spec=self._pooled_spec,
            ready_timeout=config.ready_timeout,
            check_interval=config.pool_check_interval,
        )

    # -- helpers -----------------------------------------------------------------

    def _lock(self, sandbox_id: str) -> trio.Lock:
        return self._locks.setdefault(sandbox_id, trio.Lock())

    def _forget_lock(self, sandbox_id: str) -> None:
        """Drop a terminated sandbox's lock once nobody else waits on it, so the table stays small."""
        lock = self._locks.get(sandbox_id)
        if lock is not None and lock.statistics().tasks_waiting == 0:
            del self._locks[sandbox_id]

    def _save(self, rec: SandboxRecord, **changes: object) -> SandboxRecord:
        if "state" in changes:
            target = State(str(changes["state"]))
            if target is not rec.state:
                states.check(rec.state, target)
        new = replace(rec, updated_at=self.clock(), **changes)  # type: ignore[arg-type]
        self.store.put_sandbox(new)
        if new.state is not rec.state:
            log.event("sandbox.state", sandbox_id=rec.id, old=rec.state.value, new=new.state.value, reason=new.reason)
            kind = transition_event(rec.state, new.state)
            if kind is not None:
                self._publish(kind, new)
        return new

    def _publish(self, kind: str, rec: SandboxRecord, **data: object) -> None:
        self.events.publish(
            new_event(
                kind,
                owner_id=rec.owner_id,
                subject_id=rec.id,
                data={"state": rec.state.value, "reason": rec.reason, "template_id": rec.template_id, **data},
                now=self.clock(),
            )
        )

    def labels(self, sandbox_id: str | None = None) -> dict[str, str]:
        labels = {LABEL_MANAGED: "true", LABEL_INSTANCE: self.config.instance_id}
        if sandbox_id is not None:
            labels[LABEL_SANDBOX] = sandbox_id
        return labels

    def get(self, sandbox_id: str) -> SandboxRecord:
        rec = self.store.get_sandbox(sandbox_id)
        if rec is None:
            raise NotFound(f"sandbox {sandbox_id} does not exist", code="sandbox_not_found")
        return rec

    def list(self, query: SandboxQuery) -> tuple[list[SandboxRecord], int]:
        return self.store.list_sandboxes(query)

    # -- create ------------------------------------------------------------------

    async def create(self, req: CreateRequest) -> SandboxRecord:
        template = resolve(req.template, req.owner_id, self.store.templates)
        req = for_create(template, req)
        runtime = _runtime(template, req)
        if runtime not in self.config.runtimes:
            raise Unavailable(
                f"runtime {runtime!r} is not installed on this appliance (gvisor needs runsc); "
                "run `make setup`, or create with runtime null or runc",
                code="runtime_unavailable",
            )
        if self._pool_can_serve(template, req):
            warm = await self.pool.take(template.id)
            if warm is not None:
                return await self._adopt(warm, template, req)
        if not await self.runtime.image_exists(template.image):
            raise Unavailable(
                f"template {template.id!r} has no local image {template.image}; run `make setup` to build it",
                code="image_missing",
            )
        rec = self._record(random_id("sbx-", 20), template, req, self.clock())
        self.store.put_sandbox(rec)
        self._publish("sandbox.created", rec)
        log.event("sandbox.create", sandbox_id=rec.id, template=template.id, is_async=req.is_async)
        spec = self._spec(rec.id, template, req)
        if req.is_async:
            assert self._nursery is not None, "background tasks need run() to be running"
            self._nursery.start_soon(self._boot_async, rec, spec, template.ready_cmd)
            return rec
        return await self._boot(rec, spec, keep_row_on_failure=False, ready_cmd=template.ready_cmd)

    def _record(self, sandbox_id: str, template: Template, req: CreateRequest, now: float) -> SandboxRecord:
        return SandboxRecord(
            id=sandbox_id,
            template_id=template.id,
            state=State.STARTING,
            cpu_count=req.cpu_count,
            memory_mb=req.memory_mb,
            storage_gb=req.storage_gb,
            timeout=req.timeout,
            auto_pause=req.auto_pause,
            allow_internet_access=req.allow_internet_access,
            egress=dict(req.egress),
            owner_id=req.owner_id,
            project_id=req.project_id,
            runtime=_runtime(template, req),
            secure=req.secure,
            is_async=req.is_async,
            name=req.name,
            metadata=dict(req.metadata),
            env_vars=dict(req.env_vars),
            custom_ports=[*self._declare(req.custom_ports)],
            created_at=now,
            updated_at=now,
        )

    def _spec(self, sandbox_id: str, template: Template, req: CreateRequest) -> ContainerSpec:
        """Everything about a sandbox that reaches its container; the rest lives only in its row."""
        env = dict(req.env_vars)
        if template.start_cmd:
            env["SCALEBOX_START_CMD"] = template.start_cmd
        if self.config.access_secret:
            env["SCALEBOX_ACCESS_TOKEN"] = mint_access_token(self.config.access_secret, sandbox_id)
        runtime = _runtime(template, req)
        return ContainerSpec(
            name=f"scalebox-{sandbox_id}",
            image=template.image,
            command=["python3", AGENT_MOUNT],
            env=env,
            labels=self.labels(sandbox_id),
            cpu_count=float(req.cpu_count),
            memory_mb=req.memory_mb,
            hostname=sandbox_id,
            agent_dir=self.config.agent_dir,
            vendor_dir=self.config.vendor_dir,
            network=self.config.network,
            dns=self.config.dns,
            # runc, the engine's default, is None: as in every spec before runtimes existed.
            runtime=None if runtime == RUNC else runtime,
            # 0 means the default: the same container as asking for it, so a pooled
            # sandbox serves both.
            storage_gb=req.storage_gb or DEFAULT_STORAGE_GB,
        )

    # -- the warm pool -------------------------------------------------------------------

    def _pooled_request(self, template_id: str) -> CreateRequest:
        return CreateRequest(
            template=template_id, cpu_count=self.config.pool_cpu_count, memory_mb=self.config.pool_memory_mb
        )

    def _pooled_spec(self, template_id: str) -> tuple[str, ContainerSpec]:
        # The final id now: it is in the container's name, hostname, labels and
        # the agent's token, none of which can change once the container exists.
        sandbox_id = random_id("sbx-", 20)
        template = resolve(template_id, None, self.store.templates)
        return sandbox_id, self._spec(sandbox_id, template, for_create(template, self._pooled_request(template_id)))

    def _pool_can_serve(self, template: Template, req: CreateRequest) -> bool:
        """Whether a pooled container is exactly the one a fresh create of `req` would make.

        The spec is the whole of what reaches a container (env_vars, cpu_count and
        memory_mb among it), so comparing specs built for one id leaves no field
        a fresh container would honour and a pooled one not.
        """
        # The pool waits for the agent only, not for a template's ready command.
        if not self.pool.serves(template.id) or template.ready_cmd:
            return False
        pooled = for_create(template, self._pooled_request(template.id))
        return self._spec(_MATCH_ID, template, req) == self._spec(_MATCH_ID, template, pooled)

    async def _adopt(self, warm: Warm, template: Template, req: CreateRequest) -> SandboxRecord:
        """Give a taken pooled sandbox its row: the one a fresh create would have written on success."""
        now = self.clock()
        rec = replace(
            self._record(warm.sandbox_id, template, req, now),
            state=State.RUNNING,
            container_id=warm.container_id,
            ip=warm.ip,
            started_at=now,
            timeout_at=now + req.timeout,
        )
        try:
            self.store.put_sandbox(rec)
        except BaseException:
            await self.pool.discard(warm, "its row could not be written")
            raise
        try:
            await self.network_policy.sandboxes_changed()
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                self.store.delete_sandbox(rec.id)
                await self.pool.discard(warm, "its network rules could not be written")
                await self._network_changed_quietly(rec.id)
            if isinstance(exc, RuntimeFailure):
                raise Unavailable(f"sandbox could not be started: {exc}", code="start_failed") from exc
            raise
        log.event("sandbox.create", sandbox_id=rec.id, template=template.id, is_async=req.is_async, warm=True)
        self._publish("sandbox.created", rec)
        self._publish("sandbox.started", rec, warm=True)
        return rec

    async def _boot_async(self, rec: SandboxRecord, spec: ContainerSpec, ready_cmd: str | None) -> None:
        # A failure is already recorded on the row and logged.
        with contextlib.suppress(ApiError):
            await self._boot(rec, spec, keep_row_on_failure=True, ready_cmd=ready_cmd)

    async def _boot(
        self, rec: SandboxRecord, spec: ContainerSpec, *, keep_row_on_failure: bool, ready_cmd: str | None = None
    ) -> SandboxRecord:
        async with self._lock(rec.id):
            try:
                container_id = await self.runtime.create(spec)
                rec = self._save(rec, container_id=container_id)
                log.event("sandbox.container_created", sandbox_id=rec.id, container_id=container_id)
                await self.runtime.start(container_id)
                info = await self.runtime.inspect(container_id)
                if not info.ip:
                    raise RuntimeFailure("the container has no IP address on the sandbox network")
                rec = self._save(rec, ip=info.ip)
                await self.network_policy.sandboxes_changed()
                deadline = trio.current_time() + self.config.ready_timeout
                if not await wait_until_healthy(info.ip, AGENT_PORT, deadline=deadline):
                    raise RuntimeFailure(
                        f"the sandbox agent did not answer /health within {self.config.ready_timeout:.0f} s"
                    )
                if ready_cmd:
                    await self._wait_ready_cmd(container_id, ready_cmd, deadline)
                now = self.clock()
                return self._save(rec, state=State.RUNNING, started_at=now, timeout_at=now + rec.timeout)
            except BaseException as exc:
                # Undo under a shield: a client that hangs up mid-create must not
                # leave a container or a half-written row behind.
                with trio.CancelScope(shield=True):
                    await self._remove_quietly(rec.id, rec.container_id)
                    reason = _reason(exc)
                    log.event("sandbox.create_failed", sandbox_id=rec.id, error=reason)
                    if keep_row_on_failure:
                        self._save(rec, state=State.FAILED, reason=reason, ended_at=self.clock(), ip=None)
                    else:
                        self.store.delete_sandbox(rec.id)
                        # No row keeps the failure: the event still tells it.
                        self._publish("sandbox.failed", replace(rec, state=State.FAILED, reason=reason))
                    await self._network_changed_quietly(rec.id)
                if isinstance(exc, RuntimeFailure):
                    raise Unavailable(f"sandbox could not be started: {reason}", code="start_failed") from exc
                raise

    async def _wait_ready_cmd(self, container_id: str, command: str, deadline: float) -> None:
        """Run the template's readiness check inside until it exits 0; RuntimeFailure at the deadline."""
        while True:
            code, output = await self.runtime.exec(container_id, ["/bin/sh", "-c", command])
            if code == 0:
                return
            if trio.current_time() >= deadline:
                tail = output.decode("utf-8", "replace").strip()[-300:]
                raise RuntimeFailure(
                    f"the template's ready command {command[:200]!r} did not succeed within "
                    f"{self.config.ready_timeout:.0f} s (last exit status {code}{': ' + tail if tail else ''})"
                )
            await trio.sleep(_READY_CMD_INTERVAL)

    async def _remove_quietly(self, sandbox_id: str, container_id: str | None) -> None:
        """Remove the container by id, and any other carrying this sandbox's label."""
        targets = {container_id} if container_id else set()
        try:
            targets |= {c.id for c in await self.runtime.list(self.labels(sandbox_id))}
        except RuntimeFailure as exc:
            log.event("runtime.error", op="list", sandbox_id=sandbox_id, error=str(exc))
        for cid in targets:
            await self._remove_quietly_one(sandbox_id, cid)

    # -- operations on an existing sandbox -----------------------------------------

    async def delete(self, sandbox_id: str) -> SandboxRecord:
        async with self._lock(sandbox_id):
            rec = self.get(sandbox_id)
            return await self._terminate(rec, reason="deleted")

    async def _terminate(self, rec: SandboxRecord, *, reason: str) -> SandboxRecord:
        if rec.state is State.TERMINATED:
            return rec
        rec = self._save(rec, state=State.TERMINATING, reason=reason)
        # Before the container goes: its address must not be free while the rules still name it.
        await self._network_changed_quietly(rec.id)
        try:
            await self._remove_container(rec)
        except RuntimeFailure as exc:
            self._save(rec, state=State.FAILED, reason=f"removing the container failed: {exc}")
            raise Unavailable(f"sandbox {rec.id} could not be removed: {exc}", code="remove_failed") from exc
        self._forget_lock(rec.id)
        return self._save(rec, state=State.TERMINATED, ended_at=self.clock(), ip=None)

    async def _network_changed_quietly(self, sandbox_id: str) -> None:
        """For a sandbox on its way out: a failure is logged; the next update repairs it."""
        try:
            await self.network_policy.sandboxes_changed()
        except RuntimeFailure as exc:
            log.event("firewall.error", sandbox_id=sandbox_id, error=str(exc))

    async def _remove_quietly_one(self, sandbox_id: str, container_id: str) -> None:
        try:
            await self.runtime.remove(container_id)
        except RuntimeFailure as exc:
            log.event("runtime.error", op="remove", sandbox_id=sandbox_id, error=str(exc))

    async def _remove_container(self, rec: SandboxRecord) -> None:
        if rec.container_id:
            await self.runtime.remove(rec.container_id)
        for c in await self.runtime.list(self.labels(rec.id)):
            await self.runtime.remove(c.id)

    async def pause(self, sandbox_id: str) -> SandboxRecord:
        async with self._lock(sandbox_id):
            return await self._pause(self.get(sandbox_id))

    async def _pause(self, rec: SandboxRecord, *, reason: str | None = None) -> SandboxRecord:
        """`reason` is recorded from the start: a crash mid-pause leaves a row that still
        says why (AUTO_PAUSE_REASON: traffic may wake it)."""
        if rec.state is State.PAUSED:
            raise Conflict(f"sandbox {rec.id} is already paused", code="already_paused")
        if rec.state is not State.RUNNING:
            raise Conflict(
                f"sandbox {rec.id} is {rec.state.value}; only a running sandbox can be paused", code="invalid_state"
            )
        assert rec.container_id is not None
        before = rec.reason
        rec = self._save(rec, state=State.PAUSING, reason=reason)
        try:
            await self.runtime.pause(rec.container_id or "")
        except RuntimeFailure as exc:
            self._save(rec, state=State.RUNNING, reason=before)
            raise Unavailable(f"pausing sandbox {rec.id} failed: {exc}", code="pause_failed") from exc
        return self._save(rec, state=State.PAUSED, paused_at=self.clock())

    async def resume(self, sandbox_id: str, timeout: int | None = None) -> SandboxRecord:
        """Resume a paused sandbox; a running one is returned as it is (connect semantics)."""
        async with self._lock(sandbox_id):
            rec = self.get(sandbox_id)
            if rec.state is State.RUNNING:
                if timeout is not None:
                    rec = self._save(rec, timeout=timeout, timeout_at=self.clock() + timeout)
                return rec
            return await self._resume(rec, timeout)

    async def wake(self, sandbox_id: str) -> SandboxRecord:
        """Resume a sandbox that auto_pause put to sleep, for traffic that came for it
        (gateway/wake.py); a running one is returned as it is. One paused through the
        API stays paused: its user paused it on purpose."""
        async with self._lock(sandbox_id):
            rec = self.get(sandbox_id)
            if rec.state is State.RUNNING:
                return rec
            if not states.wakes_on_traffic(rec.state, rec.reason):
                how = " through the API; resume it through the API" if rec.state is State.PAUSED else ""
                raise Conflict(f"sandbox {rec.id} is {rec.state.value}{how}", code="not_wakeable")
            return await self._resume(rec, None)

    async def _resume(self, rec: SandboxRecord, timeout: int | None) -> SandboxRecord:
        if rec.state is not State.PAUSED:
            raise Conflict(
                f"sandbox {rec.id} is {rec.state.value}; only a paused sandbox can be resumed", code="invalid_state"
            )
        assert rec.container_id is not None
        rec = self._save(rec, state=State.RESUMING)
        try:
            await self.runtime.unpause(rec.container_id or "")
        except RuntimeFailure as exc:
            self._save(rec, state=State.PAUSED)
            raise Unavailable(f"resuming sandbox {rec.id} failed: {exc}", code="resume_failed") from exc
        seconds = timeout if timeout is not None else rec.timeout
        now = self.clock()
        # A resumed sandbox gets a fresh lifetime: its clock stopped while paused.
        return self._save(
            rec, state=State.RUNNING, timeout=seconds, timeout_at=now + seconds, paused_at=None, reason=None
        )

    async def set_timeout(self, sandbox_id: str, seconds: int) -> SandboxRecord:
        async with self._lock(sandbox_id):
            rec = self.get(sandbox_id)
            if rec.state not in (State.RUNNING, State.PAUSED):
                raise Conflict(
                    f"sandbox {rec.id} is {rec.state.value}; its timeout can no longer change", code="invalid_state"
                )
            return self._save(rec, timeout=seconds, timeout_at=self.clock() + seconds)

    def _declare(self, requests: Sequence[PortRequest]) -> Sequence[dict[str, Any]]:
        """Stored declarations for `requests`, host ports allocated."""
        used = {
            int(p["host_port"]) for rec in self.store.sandboxes_in(LIVE) for p in rec.custom_ports if p.get("host_port")
        }
        span = self.config.host_ports
        wanted = sum(1 for r in requests if r.host_port == 0)
        if span is not None and wanted:
            # Something else on the machine (a host service, another appliance, a
            # client's ephemeral port) may hold a port of the range: hand out only
            # ports that can be bound now, or the gateway could not listen on them.
            # Ports asked for by number are left to the forwarder to report.
            for candidate in range(span[0], span[1] + 1):
                if wanted == 0:
                    break
                if candidate in used:
                    continue
                if _bindable(candidate):
                    wanted -= 1
                else:
                    used.add(candidate)
        return declare(requests, used, span)

    async def set_network(
        self, sandbox_id: str, *, allow_internet_access: bool | None, egress: EgressLists
    ) -> SandboxRecord:
        """Replace a sandbox's egress policy. The resolver and the egress proxy read it on
        their next query or connection; the firewall's sets are rewritten before this returns.
        Connections already open stay open."""
        async with self._lock(sandbox_id):
            rec = self.get(sandbox_id)
            if rec.state in (State.TERMINATING, State.TERMINATED, State.FAILED):
                raise Conflict(f"sandbox {rec.id} is {rec.state.value}", code="invalid_state")
            internet = rec.allow_internet_access if allow_internet_access is None else allow_internet_access
            rec = self._save(rec, allow_internet_access=internet, egress=egress)
            log.event("egress.policy", sandbox_id=rec.id, allow_internet_access=internet, **egress)
            await self.network_policy.sandboxes_changed()
            return rec

    async def move(self, sandbox_id: str, project_id: str) -> SandboxRecord:
        """Put a sandbox in another project (of its owner: the API checks). The firewall's
        peers follow before this returns."""
        async with self._lock(sandbox_id):
            rec = self.get(sandbox_id)
            if rec.state in (State.TERMINATING, State.TERMINATED, State.FAILED):
                raise Conflict(f"sandbox {rec.id} is {rec.state.value}", code="invalid_state")
            if rec.project_id == project_id:
                return rec
            rec = self._save(rec, project_id=project_id)
            log.event("sandbox.moved", sandbox_id=rec.id, project_id=project_id)
            await self.network_policy.sandboxes_changed()
            return rec

    async def add_port(self, sandbox_id: str, port: PortRequest) -> SandboxRecord:
        async with self._lock(sandbox_id):
            rec = self.get(sandbox_id)
            if rec.state in (State.TERMINATING, State.TERMINATED, State.FAILED):
                raise Conflict(f"sandbox {rec.id} is {rec.state.value}", code="invalid_state")
            clash = conflict(port, rec.custom_ports)
            if clash is not None:
                raise Conflict(f"sandbox {rec.id}: {clash}", code="port_exists")
            return self._save(rec, custom_ports=[*rec.custom_ports, *self._declare([port])])

    async def remove_port(self, sandbox_id: str, port: int) -> SandboxRecord:
        """Undeclare a port; its tokens go with it."""
        async with self._lock(sandbox_id):
            rec = self.get(sandbox_id)
            kept = [p for p in rec.custom_ports if p["port"] != port]
            if len(kept) == len(rec.custom_ports):
                raise NotFound(f"sandbox {rec.id} declares no port {port}", code="port_not_found")
            tokens = [t for t in rec.port_tokens if t["port"] != port]
            return self._save(rec, custom_ports=kept, port_tokens=tokens)

    async def add_port_token(
        self, sandbox_id: str, port: int, req: TokenRequest
    ) -> tuple[SandboxRecord, dict[str, object]]:
        """Record a new token for a declared port; expired ones are dropped on the way."""
        async with self._lock(sandbox_id):
            rec = self.get(sandbox_id)
            if rec.state not in LIVE:
                raise Conflict(f"sandbox {rec.id} is {rec.state.value}", code="invalid_state")
            if not any(normalise(p)["port"] == port for p in rec.custom_ports):
                raise NotFound(
                    f"sandbox {rec.id} declares no port {port}; declare it (POST .../ports) first",
                    code="port_not_found",
                )
            now = self.clock()
            tokens = live(rec.port_tokens, now)
            if len(tokens) >= MAX_TOKENS_PER_SANDBOX:
                raise Conflict(
                    f"sandbox {rec.id} has {len(tokens)} live port tokens, the most allowed; revoke some first",
                    code="too_many_tokens",
                )
            record = token_record(random_id("", 16), port, req, now)
            return self._save(rec, port_tokens=[*tokens, record]), record

    async def revoke_port_token(self, sandbox_id: str, port: int, token_id: str) -> SandboxRecord:
        async with self._lock(sandbox_id):
            rec = self.get(sandbox_id)
            kept = [t for t in rec.port_tokens if not (t["id"] == token_id and t["port"] == port)]
            if len(kept) == len(rec.port_tokens):
                raise NotFound(f"port {port} of sandbox {rec.id} has no token {token_id[:40]}", code="token_not_found")
            return self._save(rec, port_tokens=kept)

    async def logs(self, sandbox_id: str, tail: int) -> bytes:
        rec = self.get(sandbox_id)
        if rec.container_id is None or rec.state in (State.TERMINATED, State.FAILED):
            raise Conflict(
                f"sandbox {rec.id} is {rec.state.value}; its container and logs are gone", code="invalid_state"
            )
        try:
            return await self.runtime.logs(rec.container_id, tail)
        except RuntimeFailure as exc:
            raise Unavailable(f"logs of sandbox {rec.id} are unavailable: {exc}", code="logs_failed") from exc

    async def commit(self, sandbox_id: str, *, tag: str, labels: dict[str, str]) -> str:
        """Commit a running or paused sandbox's files to the image `tag`; return its id.

        Under the sandbox's lock, so it is not paused, resumed or deleted meanwhile. The
        image keeps the files, not the sandbox's own settings: its environment variables
        (its access token and env_vars among them) are emptied and its labels replaced,
        since a committed image's Env and Labels would otherwise reach every sandbox
        started from it.
        """
        async with self._lock(sandbox_id):
            rec = self.get(sandbox_id)
            if rec.state not in (State.RUNNING, State.PAUSED) or rec.container_id is None:
                raise Conflict(
                    f"sandbox {rec.id} is {rec.state.value}; only a running or paused sandbox can be committed",
                    code="invalid_state",
                )
            cleared = sorted({*rec.env_vars, "SCALEBOX_START_CMD", "SCALEBOX_ACCESS_TOKEN"})
            changes = [f"ENV {name}=" for name in cleared] + [f"LABEL {LABEL_SANDBOX}="]
            try:
                return await self.runtime.commit(
                    rec.container_id, tag, labels=labels, changes=changes, pause=rec.state is State.RUNNING
                )
            except RuntimeFailure as exc:
                raise Unavailable(f"committing sandbox {rec.id} failed: {exc}", code="commit_failed") from exc

    async def stats(self, sandbox_id: str) -> tuple[SandboxRecord, ContainerStats | None]:
        rec = self.get(sandbox_id)
        if rec.state not in (State.RUNNING, State.PAUSED) or rec.container_id is None:
            return rec, None
        try:
            return rec, await self.runtime.stats(rec.container_id)
        except RuntimeFailure as exc:
            raise Unavailable(f"metrics for sandbox {rec.id} are unavailable: {exc}", code="stats_failed") from exc

    # -- background work -----------------------------------------------------------

    def _warn_near_timeout(self, running: Sequence[SandboxRecord], now: float) -> None:
        """sandbox.timeout_warning once per deadline: a timeout moved later warns again."""
        near = {
            rec.id: (rec, rec.timeout_at)
            for rec in running
            if rec.timeout_at is not None and 0 < rec.timeout_at - now <= TIMEOUT_WARNING
        }
        for rec, deadline in near.values():
            if self._warned.get(rec.id) != deadline:
                what = "paused" if rec.auto_pause else "terminated"
                self._publish("sandbox.timeout_warning", rec, seconds_left=round(deadline - now), then=what)
        self._warned = {sid: deadline for sid, (_, deadline) in near.items()}

    async def reap_once(self) -> None:
        now = self.clock()
        running = self.store.sandboxes_in([State.RUNNING])
        self._warn_near_timeout(running, now)
        for rec in running:
            if rec.timeout_at is None or rec.timeout_at > now:
                continue
            async with self._lock(rec.id):
                current = self.store.get_sandbox(rec.id)
                if current is None or current.state is not State.RUNNING or (current.timeout_at or 0) > now:
                    continue
                log.event("sandbox.timeout", sandbox_id=rec.id, auto_pause=rec.auto_pause)
                try:
                    if current.auto_pause:
                        await self._pause(current, reason=states.AUTO_PAUSE_REASON)
                    else:
                        await self._terminate(current, reason="timeout")
                except ApiError as exc:
                    log.event("sandbox.reap_failed", sandbox_id=rec.id, error=exc.message)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the background tasks (async creates, the warm pool, the reaper) until cancelled.

        Call `reconcile` first: it removes labelled containers without a row, which
        is what pooled ones are.
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.pool.run)
            task_status.started()
            while True:
                await trio.sleep(self.config.reap_interval)
                await self.reap_once()

    def spawn(self, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        """Run `fn(*args)` in the background until it ends or the appliance stops (template builds)."""
        assert self._nursery is not None, "background tasks need run() to be running"
        self._nursery.start_soon(fn, *args)

    async def reconcile(self) -> None:
        """Make Podman agree with the database after a start (see ARCHITECTURE.md)."""
        containers: dict[str, list[ContainerInfo]] = {}
        for info in await self.runtime.list(self.labels()):
            containers.setdefault(info.labels.get(LABEL_SANDBOX, ""), []).append(info)
        rows = {rec.id: rec for rec in self.store.sandboxes_in(LIVE | {State.TERMINATING})}

        for sandbox_id, infos in containers.items():
            if sandbox_id not in rows:
                for info in infos:
                    log.event("reconcile.orphan_container", container=info.name, sandbox_id=sandbox_id)
                    await self._remove_quietly(sandbox_id, info.id)

        for rec in rows.values():
            infos = containers.get(rec.id, [])
            found = next((i for i in infos if i.id == rec.container_id), infos[0] if infos else None)
            for extra in infos:
                # Only one container can be the sandbox; any other with its label is debris.
                if found is not None and extra.id != found.id:
                    log.event("reconcile.extra_container", container=extra.name, sandbox_id=rec.id)
                    await self._remove_quietly_one(rec.id, extra.id)
            await self._reconcile_one(rec, found)

    async def _reconcile_one(self, rec: SandboxRecord, info: ContainerInfo | None) -> None:
        now = self.clock()
        if rec.state is State.STARTING:
            # Never reported running: undo it. An async create was already
            # reported to its client, so it stays visible as failed.
            await self._remove_quietly(rec.id, rec.container_id)
            if rec.is_async:
                self._save(rec, state=State.FAILED, reason="the appliance restarted during create", ended_at=now)
            else:
                self.store.delete_sandbox(rec.id)
            log.event("reconcile.unfinished_create", sandbox_id=rec.id)
            return
        if rec.state is State.TERMINATING:
            await self._remove_quietly(rec.id, rec.container_id)
            self._save(rec, state=State.TERMINATED, ended_at=now, ip=None)
            return
        if info is None or info.state not in ("running", "paused"):
            if info is not None:
                await self._remove_quietly(rec.id, info.id)
            why = "its container vanished" if info is None else f"its container was {info.state}"
            self.store.put_sandbox(
                replace(rec, state=State.TERMINATED, reason=why, ended_at=now, ip=None, updated_at=now)
            )
            log.event("reconcile.lost", sandbox_id=rec.id, reason=why)
            return
        # The container is the truth about whether processes are frozen.
        state = State.PAUSED if info.state == "paused" else State.RUNNING
        changes: dict[str, object] = {"container_id": info.id, "ip": info.ip}
        if state is not rec.state:
            changes.update(state=state, paused_at=now if state is State.PAUSED else None)
            if state is State.RUNNING:
                changes["timeout_at"] = now + rec.timeout
        self.store.put_sandbox(replace(rec, updated_at=now, **changes))  # type: ignore[arg-type]


def _bindable(port: int) -> bool:
    """Whether a listener could take `port` on every interface now (as the gateway's host
    port listeners would: SO_REUSEADDR, so a connection in TIME_WAIT does not count)."""
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 on this machine
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def _runtime(template: Template, req: CreateRequest) -> str:
    """The runtime a create gets: the one it names, else its template's."""
    return req.runtime or template.runtime


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ContainerNotFound):
        return "the container disappeared while starting"
    if isinstance(exc, trio.Cancelled):
        return "the create was cancelled"
    return str(exc) or type(exc).__name__
