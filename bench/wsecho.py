"""WebSocket echo messages/s: the gateway against nginx and the upstream directly.

The upstream of `bench.rig` echoes WebSocket frames on `/ws`. One client in this
process (asyncio) opens a few connections per target and keeps a fixed window of
small binary messages in flight on each: every echo that comes back sends one
more. The opening handshake and the first echo go through wsproto (checked);
after that the client only counts bytes (every echo of an n-byte message is an
unmasked frame of known length) and writes a pre-built masked frame, so that it
costs far less per message than any proxy. Its own CPU use is recorded: near a
whole core, the client, not the proxy, is the bottleneck, and the report says so.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Message, RejectConnection, Request

from bench import procs
from bench.client import Target
from bench.rig import Rig, rotated
from bench.stats import median, ratio
from bench.upstream import ws_header

PATH = "/ws"
CLIENT_BOUND = 0.9  # CPU seconds per wall second of the client above which it is the bottleneck


@dataclass(frozen=True)
class WsPlan:
    connections: int = 8
    window: int = 16  # messages in flight per connection
    message_bytes: int = 64
    rounds: int = 3
    seconds: float = 3.0
    warmup: float = 0.5

    @classmethod
    def quick(cls) -> WsPlan:
        return cls(rounds=1, seconds=1.5, warmup=0.3)


@dataclass
class WsResult:
    targets: list[str]
    rate: dict[str, list[float]] = field(default_factory=dict)  # messages/s per round
    client_busy: dict[str, list[float]] = field(default_factory=dict)  # client CPU s / wall s
    proxy_cpu_us_per_msg: dict[str, list[float]] = field(default_factory=dict)
    plan: WsPlan = field(default_factory=WsPlan)
    failed: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "targets": self.targets,
            "rate": self.rate,
            "client_busy": self.client_busy,
            "proxy_cpu_us_per_msg": self.proxy_cpu_us_per_msg,
            "plan": vars(self.plan),
            "failed": self.failed,
            "summary": summarize(self),
        }


def summarize(result: WsResult) -> dict[str, Any]:
    out: dict[str, Any] = {
        name: {
            "msgs_per_s": median(result.rate.get(name, [])),
            "client_busy": median(result.client_busy.get(name, [])),
            "proxy_cpu_us_per_msg": median(result.proxy_cpu_us_per_msg.get(name, [])),
        }
        for name in result.targets
    }
    for ours, theirs in (("gateway http", "nginx http"), ("gateway https", "nginx https")):
        if ours in result.rate and theirs in result.rate:
            pairs = [r for a, b in zip(result.rate[ours], result.rate[theirs], strict=False) if (r := ratio(a, b))]
            out[ours]["ratio_vs_nginx"] = median(pairs) if pairs else None
    busy = [median(v) for v in result.client_busy.values() if v]
    out["client_bound"] = bool(busy) and max(busy) >= CLIENT_BOUND
    return out


class Echoer(asyncio.Protocol):
    """One WebSocket connection keeping `window` identical messages in flight."""

    def __init__(self, host: str, payload: bytes, window: int, ready: asyncio.Future[None]) -> None:
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.host, self.payload, self.window, self.ready = host, payload, window, ready
        self.transport: asyncio.Transport | None = None
        self.frame = b""
        self.echo_len = len(ws_header(0x82, len(payload))) + len(payload)
        self.pumping = False
        self.stopped = False
        self.pending = 0
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.ws.send(Request(host=self.host, target=PATH)))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before the first echo: {exc}"))

    def data_received(self, data: bytes) -> None:
        if self.pumping:
            self.pending += len(data)
            k, self.pending = divmod(self.pending, self.echo_len)
            self.received += k
            if k and not self.stopped and self.transport is not None:
                self.transport.write(self.frame * k)
            return
        self._handshake(data)

    def _handshake(self, data: bytes) -> None:
        assert self.transport is not None
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, AcceptConnection):
                # The same masked frame is sent again and again (a fixed mask is allowed).
                self.frame = self.ws.send(Message(data=self.payload))
                self.transport.write(self.frame)
            elif isinstance(event, BytesMessage) and not self.pumping:
                if bytes(event.data) != self.payload or not event.message_finished:
                    self._fail(f"echo differs: {bytes(event.data)[:40]!r}")
                    return
                self.pumping = True
                self.transport.write(self.frame * self.window)
                if not self.ready.done():
                    self.ready.set_result(None)
            elif isinstance(event, RejectConnection | CloseConnection):
                self._fail(f"refused: {event!r}")
                return

    def _fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(why))
        if self.transport is not None:
            self.transport.abort()

    def stop(self) -> None:
        self.stopped = True
        if self.transport is not None:
            self.transport.abort()


def _factory(echoer: Echoer) -> Callable[[], Echoer]:
    return lambda: echoer


async def _measure(target: Target, plan: WsPlan, pids: list[int]) -> tuple[float, float, float | None]:
    """(messages/s, client CPU s per wall s, proxy CPU us per message) for one target."""
    loop = asyncio.get_running_loop()
    payload = os.urandom(plan.message_bytes)
    server_hostname = target.host.rsplit(":", 1)[0] if target.tls else None
    echoers: list[Echoer] = []
    try:
        for _ in range(plan.connections):
            ready: asyncio.Future[None] = loop.create_future()
            echoer = Echoer(target.host, payload, plan.window, ready)
            echoers.append(echoer)
            await loop.create_connection(
                _factory(echoer), target.ip, target.port, ssl=target.tls, server_hostname=server_hostname
            )
            await asyncio.wait_for(ready, 10)
        await asyncio.sleep(plan.warmup)
        meter = procs.CpuMeter(pids)
        meter.start()
        n0, cpu0 = sum(e.received for e in echoers), time.process_time()
        t0 = time.perf_counter()
        await asyncio.sleep(plan.seconds)
        elapsed = time.perf_counter() - t0
        n = sum(e.received for e in echoers) - n0
        busy = (time.process_time() - cpu0) / elapsed
        proxy = meter.stop() / n * 1e6 if pids and n else None
        return n / elapsed, busy, proxy
    finally:
        for e in echoers:
            e.stop()


def run(rig: Rig, plan: WsPlan, *, log: Callable[[str], None] = print) -> WsResult:
    targets = rig.targets
    result = WsResult(targets=[t.name for t in targets], plan=plan)
    log(
        f"websocket: echo of {plan.message_bytes}-byte messages, {plan.connections} connections x "
        f"{plan.window} in flight, {plan.rounds} x {plan.seconds:g} s per target"
    )
    for i in range(plan.rounds):
        for t in rotated(targets, i):
            try:
                rate, busy, proxy = asyncio.run(_measure(t, plan, rig.proxy_pids(t.name)))
            except Exception as exc:  # keep the other targets' numbers; say what broke
                log(f"websocket: {t.name} failed: {exc!r}")
                result.failed.append(f"{t.name}: {exc!r}"[:300])
                continue
            result.rate.setdefault(t.name, []).append(rate)
            result.client_busy.setdefault(t.name, []).append(busy)
            if proxy is not None:
                result.proxy_cpu_us_per_msg.setdefault(t.name, []).append(proxy)
    return result
