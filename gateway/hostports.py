"""Plain TCP host ports: a port of the host forwarded, byte for byte, to a container port.

For clients that cannot do TLS (so cannot name a sandbox by SNI on the gateway's
one port): a `tcp` or `tls` declaration with `host_port` (controlplane/ports.py)
owns one port of the appliance's range while its sandbox is live, and every
connection to that host port goes to the declared container port.

    wanted(sandboxes) -> {host_port: Target}   pure: what should be open
    plan(wanted, opened) -> Changes            pure: what to open, close, retarget
    HostPortForwarder                          Trio shell: listeners and connections

The shell follows the sandbox table: when its version changes it reconciles the
listeners with `plan`. The mapping is also read again at each accept, so a
connection never reaches a sandbox that no longer owns the port even inside a
poll interval. When a host port closes or goes to another sandbox, the
connections made under the old mapping are ended too: their sandbox or port is
gone. A port that cannot be bound (something else holds it) is logged and tried
again later; it never takes the other ports or the appliance down.

There is no token check on a host port: it is as public as the host's port is
reachable, which is why only tcp and tls ports may ask for one. Only the
appliance process runs the forwarder (not the workers of appliance/workers.py):
one listener per host port, kept in step by the table's one writer.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import trio

from appliance import log
from gateway.caps import Counts, address_key
from gateway.proxy import Waker
from gateway.streams import peer_of, splice
from gateway.traffic import TrafficCounter
from gateway.upstream import TcpAddress, UpstreamUnavailable, open_stream


@dataclass(frozen=True)
class Target:
    sandbox_id: str
    port: int  # the container port


@dataclass(frozen=True, kw_only=True)
class PortedSandbox:
    """What the forwarder may know of one live sandbox."""

    id: str
    running: bool
    ip: str | None
    # Asleep by auto_pause: a connection wakes it (gateway/wake.py), as on the gateway port.
    wakeable: bool = False
    # host port -> container port, for its declarations that were given one.
    host_ports: Mapping[int, int] = field(default_factory=dict)


def wanted(sandboxes: Iterable[PortedSandbox]) -> dict[int, Target]:
    """The host ports that should be open, and where each goes."""
    out: dict[int, Target] = {}
    for sandbox in sandboxes:
        for host_port, port in sandbox.host_ports.items():
            # Allocation never gives one port twice; should a row say so anyway,
            # the first sandbox listed (the oldest) keeps it rather than flapping.
            out.setdefault(host_port, Target(sandbox.id, port))
    return out


@dataclass(frozen=True)
class Changes:
    open: Mapping[int, Target]
    close: frozenset[int]
    # Open already but now for another sandbox or port: keep listening, end old connections.
    retarget: Mapping[int, Target]

    def __bool__(self) -> bool:
        return bool(self.open or self.close or self.retarget)


def plan(want: Mapping[int, Target], opened: Mapping[int, Target]) -> Changes:
    """What to do to go from the host ports `opened` to those wanted."""
    return Changes(
        open={p: t for p, t in want.items() if p not in opened},
        close=frozenset(p for p in opened if p not in want),
        retarget={p: t for p, t in want.items() if p in opened and opened[p] != t},
    )


@dataclass(frozen=True, kw_only=True)
class HostPortLimits:
    tunnel_idle_timeout: float = 3600.0
    connect_timeout: float = 5.0
    max_per_address: int = 512
    # How often the table's version is looked at: a host port opens or closes within this.
    poll_interval: float = 0.2
    # A port that could not be bound is tried again this often (and logged once).
    retry_interval: float = 5.0


@dataclass(eq=False)
class _Listening:
    target: Target
    listeners: list[trio.SocketListener]
    scope: trio.CancelScope


@dataclass(eq=False)
class _Connection:
    host_port: int
    target: Target
    streams: list[trio.abc.Stream]
    ended: bool = False

    def end(self) -> None:
        """Close both sides now: the pumps of splice see it and return (with their counts)."""
        self.ended = True
        for stream in self.streams:
            if isinstance(stream, trio.SocketStream):
                stream.socket.close()


class HostPortForwarder:
    def __init__(
        self,
        *,
        sandboxes: Callable[[], Iterable[PortedSandbox]],
        version: Callable[[], int],
        hosts: Sequence[str | None] = (None,),
        limits: HostPortLimits = HostPortLimits(),
        waker: Waker | None = None,
        traffic: TrafficCounter | None = None,
    ) -> None:
        self.waker = waker
        # Bytes forwarded per sandbox, for metering (gateway/traffic.py).
        self.traffic = traffic or TrafficCounter()
        # The live sandboxes, read again whenever `version` changes.
        self._read = sandboxes
        self._version = version
        # Addresses to listen on (None: every interface), as the gateway's own port.
        self.hosts: tuple[str | None, ...] = (None,) if not hosts or None in hosts else tuple(dict.fromkeys(hosts))
        self.limits = limits
        self._seen: int | None = None  # version of the snapshot below
        self._want: dict[int, Target] = {}
        self._sandboxes: dict[str, PortedSandbox] = {}
        self._opened: dict[int, _Listening] = {}
        # host port -> (target it failed for, when to try again)
        self._failed: dict[int, tuple[Target, float]] = {}
        self._connections: set[_Connection] = set()
        self._per_address: Counts[str] = Counts(limits.max_per_address)

    @property
    def open_ports(self) -> dict[int, Target]:
        return {p: lst.target for p, lst in self._opened.items()}

    def _refresh(self) -> None:
        version = self._version()
        if version == self._seen:
            return
        sandboxes = list(self._read())
        self._seen = version
        self._want = wanted(sandboxes)
        self._sandboxes = {s.id: s for s in sandboxes}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Forward until cancelled; started once the host ports wanted now are open (or failed)."""
        async with trio.open_nursery() as nursery:
            try:
                reconciled = self._version()
                await self._reconcile(nursery)
                task_status.started()
                while True:
                    await trio.sleep(self.limits.poll_interval)
                    version = self._version()
                    retry = any(at <= trio.current_time() for _, at in self._failed.values())
                    if version != reconciled or retry:
                        reconciled = version
                        await self._reconcile(nursery)
            finally:
                for port in list(self._opened):
                    self._close(port)

    async def _reconcile(self, nursery: trio.Nursery) -> None:
        self._refresh()
        changes = plan(self._want, self.open_ports)
        for port in changes.close:
            self._close(port)
            log.event("gateway.host_port_closed", host_port=port)
        for port, target in changes.retarget.items():
            self._opened[port].target = target
            log.event("gateway.host_port_retargeted", host_port=port, sandbox=target.sandbox_id, port=target.port)
        # Connections made under a mapping that no longer holds: their sandbox or port is gone.
        for conn in list(self._connections):
            if self._want.get(conn.host_port) != conn.target:
                conn.end()
        for port in [p for p in self._failed if p not in changes.open]:
            del self._failed[port]
        for port, target in changes.open.items():
            await self._listen(port, target, nursery)

    async def _listen(self, port: int, target: Target, nursery: trio.Nursery) -> None:
        failed = self._failed.get(port)
        if failed is not None and failed[0] == target and trio.current_time() < failed[1]:
            return
        listeners: list[trio.SocketListener] = []
        try:
            for host in self.hosts:
                listeners += await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            for listener in listeners:
                listener.socket.close()
            self._failed[port] = (target, trio.current_time() + self.limits.retry_interval)
            if failed is None or failed[0] != target:  # once, not at every retry
                log.event(
                    "gateway.host_port_failed",
                    host_port=port,
                    sandbox=target.sandbox_id,
                    port=target.port,
                    error=exc.strerror or str(exc),
                )
            return
        self._failed.pop(port, None)
        listening = _Listening(target=target, listeners=listeners, scope=trio.CancelScope())
        self._opened[port] = listening
        nursery.start_soon(self._serve_port, port, listening, nursery)
        log.event("gateway.host_port_opened", host_port=port, sandbox=target.sandbox_id, port=target.port)

    def _close(self, port: int) -> None:
        listening = self._opened.pop(port)
        listening.scope.cancel()
        # Closed now, not when the accept tasks next run: the port is free at once.
        for listener in listening.listeners:
            listener.socket.close()

    async def _serve_port(self, port: int, listening: _Listening, connections: trio.Nursery) -> None:
        with listening.scope:
            async with trio.open_nursery() as accepting:
                for listener in listening.listeners:
                    accepting.start_soon(self._accept_loop, port, listener, connections)

    async def _accept_loop(self, port: int, listener: trio.SocketListener, connections: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except trio.ClosedResourceError:
                return  # the port was closed (_close)
            except OSError as exc:
                # EMFILE and friends: back off rather than spin (as trio's serve_listeners).
                log.event("gateway.accept_error", host_port=port, error=str(exc))
                await trio.sleep(0.1)
                continue
            connections.start_soon(self._handle, port, stream)

    async def _handle(self, port: int, stream: trio.SocketStream) -> None:
        host, peer = peer_of(stream)
        key = address_key(host)
        started = time.monotonic()
        fields: dict[str, object] = {"peer": peer, "host_port": port, "mode": "host_port", "worker": 0}
        try:
            if not self._per_address.take(key):
                log.event("gateway.connection", **fields, outcome="too_many_connections_from_address", ms=0)
                return
            try:
                await self._forward(port, stream, fields)
            except Exception as exc:
                # One connection's bug must not take down the listeners and every other connection.
                fields |= {"outcome": "crashed", "error": repr(exc), "traceback": traceback.format_exc()}
            finally:
                self._per_address.give_back(key)
                fields.setdefault("outcome", "cancelled")  # the appliance is stopping
                log.event("gateway.connection", **fields, ms=round((time.monotonic() - started) * 1000, 2))
        finally:
            await trio.aclose_forcefully(stream)

    async def _forward(self, port: int, stream: trio.SocketStream, fields: dict[str, object]) -> None:
        """Connect `stream` to where `port` goes now; say how it went in `fields`."""
        self._refresh()
        target = self._want.get(port)
        if target is None:
            fields["outcome"] = "host_port_released"
            return
        sandbox = self._sandboxes[target.sandbox_id]
        fields |= {"sandbox": target.sandbox_id, "port": target.port}
        if not sandbox.running and sandbox.wakeable and self.waker is not None:
            failure = await self.waker(target.sandbox_id)
            if failure is not None:
                fields |= {"outcome": "wake_failed", "error": failure}
                return
            self._refresh()
            if self._want.get(port) != target:
                fields["outcome"] = "host_port_released"
                return
            sandbox = self._sandboxes[target.sandbox_id]
        if not sandbox.running or sandbox.ip is None:
            # Nothing can be said in a protocol we do not speak: close, and log why.
            fields["outcome"] = "sandbox_not_running"
            return
        conn = _Connection(host_port=port, target=target, streams=[stream])
        self._connections.add(conn)
        moved = (0, 0)
        try:
            try:
                upstream = await open_stream(TcpAddress(sandbox.ip, target.port), timeout=self.limits.connect_timeout)
            except UpstreamUnavailable as exc:
                fields["outcome"] = "upstream_unavailable"
                fields["error"] = f"nothing is listening on port {target.port} in sandbox {target.sandbox_id}: {exc}"
                return
            conn.streams.append(upstream)
            try:
                if not conn.ended:  # the port may have been released while connecting
                    moved = await splice(stream, upstream, idle_timeout=self.limits.tunnel_idle_timeout)
            finally:
                await trio.aclose_forcefully(upstream)
            fields["outcome"] = "ok"
        finally:
            self._connections.discard(conn)
            if conn.ended:
                fields["outcome"] = "host_port_released"
            fields |= {"bytes_in": moved[0], "bytes_out": moved[1]}
            self.traffic.add(target.sandbox_id, moved[0], moved[1])
