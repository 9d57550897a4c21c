"""Raw TCP behind TLS and TLS passthrough: the gateway against nginx's stream module and direct.

On the rig of `bench.tcprig` (one service; direct, nginx stream and the gateway, for a
`tcp` port, TLS ended by the proxy, and a `tls` port, passed through). Every part visits
the six targets in rotation, round by round, so that noise on the shared machine lands
on all of them alike; a ratio is the median over rounds of ours / nginx's in the same
round (for round trips, a round is a block of messages and its median).

    round trip  a small message echoed on an established connection, one at a time, in
                blocks (p50, p99 over every sample): a relay's cost per message, idle machine
    setup       connect, the TLS handshake (the proxy's, or the service's when passed
                through), the first echo, close; one at a time
    transfer    N MiB one way on an established connection warmed by 1 MiB first: a
                download (`send N`) and an upload (`sink N`: discarded, then `done`);
                MB/s, the proxy's CPU seconds per GB moved and the client's CPU use

Direct tcp is plaintext: the tcp group's "added over direct" includes TLS itself.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench import procs
from bench.client import Target
from bench.rig import Rig, rotated
from bench.stats import median, paired, percentile, ratio
from bench.tcpupstream import DONE

# group -> (ours, nginx, direct)
GROUPS = {"tcp": ("gateway tcp", "nginx tcp", "direct tcp"), "tls": ("gateway tls", "nginx tls", "direct tls")}
CLIENT_BOUND = 0.9  # client CPU seconds per wall second above which it, not the proxy, is the bottleneck
_RECV = 1 << 20
_WARM = 1 << 20  # bytes moved before a timed transfer: TCP windows and TLS buffers open


@dataclass(frozen=True)
class TcpPlan:
    warmup: int = 50  # round trips per connection before any is timed
    rtt_blocks: int = 10
    rtt_block: int = 200
    message_bytes: int = 64
    setup_rounds: int = 50
    transfer_rounds: int = 3
    transfer_mib: int = 256

    @classmethod
    def quick(cls) -> TcpPlan:
        return cls(warmup=20, rtt_blocks=3, rtt_block=50, setup_rounds=10, transfer_rounds=1, transfer_mib=32)


@dataclass
class TcpResult:
    targets: list[str]
    plan: TcpPlan = field(default_factory=TcpPlan)
    rtt_ms: dict[str, list[list[float]]] = field(default_factory=dict)  # per block, every sample
    setup_ms: dict[str, list[float]] = field(default_factory=dict)  # one per round
    download_mb_s: dict[str, list[float]] = field(default_factory=dict)
    upload_mb_s: dict[str, list[float]] = field(default_factory=dict)
    proxy_cpu_s_per_gb: dict[str, list[float]] = field(default_factory=dict)  # per transfer, both ways
    client_busy: dict[str, list[float]] = field(default_factory=dict)  # per transfer: client CPU s / wall s
    notes: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    nginx_config: str = ""

    def to_json(self) -> dict[str, Any]:
        def rounded(samples: dict[str, list[float]]) -> dict[str, list[float]]:
            return {name: [round(x, 4) for x in v] for name, v in samples.items()}

        return {
            "targets": self.targets,
            "plan": vars(self.plan),
            "rtt_ms": {name: [[round(x, 4) for x in b] for b in blocks] for name, blocks in self.rtt_ms.items()},
            "setup_ms": rounded(self.setup_ms),
            "download_mb_s": rounded(self.download_mb_s),
            "upload_mb_s": rounded(self.upload_mb_s),
            "proxy_cpu_s_per_gb": rounded(self.proxy_cpu_s_per_gb),
            "client_busy": rounded(self.client_busy),
            "notes": self.notes,
            "failed": self.failed,
            "nginx_config": self.nginx_config,
            "summary": summarize(self),
        }


def _difference(x: float, y: float) -> float:
    return x - y


def _block_medians(blocks: list[list[float]]) -> list[float]:
    return [median(b) for b in blocks if b]


def _group(result: TcpResult, per: dict[str, dict[str, Any]], ours: str, theirs: str, direct: str) -> dict[str, Any]:
    """Ours against nginx in one group: ratios of paired rounds, and round-trip time added over direct."""
    blocks = {name: _block_medians(result.rtt_ms.get(name, [])) for name in (ours, theirs, direct)}

    def added_us(name: str) -> float | None:
        value = paired(blocks[name], blocks[direct], _difference)
        return None if value is None else value * 1000

    def by_round(samples: dict[str, list[float]]) -> float | None:
        return paired(samples.get(ours, []), samples.get(theirs, []), ratio)

    return {
        "rtt_p50": paired(blocks[ours], blocks[theirs], ratio),
        "rtt_p99": ratio(per.get(ours, {}).get("rtt_p99_ms"), per.get(theirs, {}).get("rtt_p99_ms")),
        "setup_p50": by_round(result.setup_ms),
        "download": by_round(result.download_mb_s),
        "upload": by_round(result.upload_mb_s),
        "proxy_cpu_per_gb": ratio(
            per.get(ours, {}).get("proxy_cpu_s_per_gb"), per.get(theirs, {}).get("proxy_cpu_s_per_gb")
        ),
        "added_rtt_p50_us": {ours: added_us(ours), theirs: added_us(theirs)},
    }


def summarize(result: TcpResult) -> dict[str, Any]:
    """Per target: medians (and p99s) over every sample; per group: gateway / nginx ratios
    (latency and CPU: > 1 is worse; MB/s: < 1 is worse)."""
    per: dict[str, dict[str, Any]] = {}
    for name in result.targets:
        flat = [x for block in result.rtt_ms.get(name, []) for x in block]
        setup = result.setup_ms.get(name, [])
        cpu = result.proxy_cpu_s_per_gb.get(name, [])
        per[name] = {
            "rtt_p50_ms": median(flat),
            "rtt_p99_ms": percentile(flat, 99),
            "rtt_n": len(flat),
            "setup_p50_ms": median(setup),
            "setup_p99_ms": percentile(setup, 99),
            "download_mb_s": median(result.download_mb_s.get(name, [])),
            "upload_mb_s": median(result.upload_mb_s.get(name, [])),
            "proxy_cpu_s_per_gb": median(cpu) if cpu else None,
            "client_busy": median(result.client_busy.get(name, [])),
        }
    groups = {
        group: _group(result, per, *names)
        for group, names in GROUPS.items()
        if names[0] in result.targets and names[1] in result.targets
    }
    # Where the client was near a core busy, its MB/s may be the client's limit, not the path's.
    bound = [n for n in result.targets if not math.isnan(b := per[n]["client_busy"]) and b >= CLIENT_BOUND]
    return {"targets": per, "ratios": groups, "client_bound": bound}


# -- the client ---------------------------------------------------------------------------


class ServiceConnection:
    """One connection to the service (`bench.tcpupstream`): plaintext, or TLS with the
    target's host as SNI; Nagle off, as every proxy here has it."""

    def __init__(self, target: Target, *, timeout: float = 60.0) -> None:
        self.name = target.name
        raw = socket.create_connection((target.ip, target.port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = target.tls.wrap_socket(raw, server_hostname=target.host) if target.tls is not None else raw
        self.buf = bytearray(_RECV)
        self.view = memoryview(self.buf)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ServiceConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, size: int) -> bytes:
        """Exactly `size` bytes (at most the buffer's size)."""
        have = 0
        while have < size:
            n = self.sock.recv_into(self.view[have:size])
            if not n:
                raise ConnectionError(f"{self.name}: closed with {size - have} bytes to come")
            have += n
        return bytes(self.view[:size])

    def drain(self, size: int) -> None:
        """Read and drop `size` bytes."""
        left = size
        while left > 0:
            n = self.sock.recv_into(self.view, min(left, _RECV))
            if not n:
                raise ConnectionError(f"{self.name}: closed with {left} bytes to come")
            left -= n

    def start_echo(self, message: bytes) -> None:
        self.sock.sendall(b"echo\n" + message)
        self._check(self.read(len(message)), message)

    def round_trip(self, message: bytes) -> float:
        """Seconds for one message to come back (after `start_echo`)."""
        t0 = time.perf_counter()
        self.sock.sendall(message)
        got = self.read(len(message))
        elapsed = time.perf_counter() - t0
        self._check(got, message)
        return elapsed

    def download(self, size: int) -> None:
        self.sock.sendall(b"send %d\n" % size)
        self.drain(size)

    def upload(self, size: int, block: memoryview) -> None:
        self.sock.sendall(b"sink %d\n" % size)
        left = size
        while left > 0:
            n = min(left, len(block))
            self.sock.sendall(block[:n])
            left -= n
        self._check(self.read(len(DONE)), DONE)

    def _check(self, got: bytes, wanted: bytes) -> None:
        if got != wanted:
            raise RuntimeError(f"{self.name}: got {got[:40]!r}, wanted {wanted[:40]!r}")


def timed_setup(target: Target, message: bytes) -> float:
    """Seconds to connect (and handshake), have the first message echoed, and close."""
    t0 = time.perf_counter()
    with ServiceConnection(target, timeout=30) as conn:
        conn.start_echo(message)
    return time.perf_counter() - t0


# -- parts --------------------------------------------------------------------------------


def _round_trips(targets: list[Target], plan: TcpPlan, result: TcpResult) -> None:
    message = os.urandom(plan.message_bytes)
    conns = {t.name: ServiceConnection(t) for t in targets}
    try:
        for t in targets:
            conns[t.name].start_echo(message)
            for _ in range(plan.warmup):
                conns[t.name].round_trip(message)
        for block in range(plan.rtt_blocks):
            for t in rotated(targets, block):
                conn = conns[t.name]
                samples = [conn.round_trip(message) * 1000 for _ in range(plan.rtt_block)]
                result.rtt_ms.setdefault(t.name, []).append(samples)
    finally:
        for conn in conns.values():
            conn.close()


def _setups(targets: list[Target], plan: TcpPlan, result: TcpResult) -> None:
    message = os.urandom(plan.message_bytes)
    for t in targets:
        timed_setup(t, message)  # first connections (routes, caches) are not timed
    for i in range(plan.setup_rounds):
        for t in rotated(targets, i):
            result.setup_ms.setdefault(t.name, []).append(timed_setup(t, message) * 1000)


def _timed(action: Callable[[], None], pids: list[int]) -> tuple[float, float, float | None]:
    """(wall seconds, this process's CPU seconds, the proxy's CPU seconds or None: no proxy)."""
    meter = procs.CpuMeter(pids)
    meter.start()
    cpu0, t0 = time.process_time(), time.perf_counter()
    action()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    proxy = meter.stop()
    return wall, cpu, proxy if pids else None


def _transfers(rig: Rig, targets: list[Target], plan: TcpPlan, result: TcpResult) -> None:
    size = plan.transfer_mib << 20
    block = memoryview(os.urandom(_RECV))
    for i in range(plan.transfer_rounds):
        for t in rotated(targets, i):
            pids = rig.proxy_pids(t.name)
            with ServiceConnection(t) as conn:
                conn.download(_WARM)
                conn.upload(_WARM, block)
                for way, action in (
                    (result.download_mb_s, lambda: conn.download(size)),
                    (result.upload_mb_s, lambda: conn.upload(size, block)),
                ):
                    wall, cpu, proxy = _timed(action, pids)
                    way.setdefault(t.name, []).append(size / 1e6 / wall)
                    result.client_busy.setdefault(t.name, []).append(cpu / wall)
                    if proxy is not None:
                        result.proxy_cpu_s_per_gb.setdefault(t.name, []).append(proxy / (size / 1e9))


def run(rig: Rig, plan: TcpPlan, *, log: Callable[[str], None] = print) -> TcpResult:
    """Every part in turn; a part that fails is recorded in `failed` and the others still run."""
    targets = rig.targets
    result = TcpResult(targets=[t.name for t in targets], plan=plan, notes=list(rig.notes))
    if rig.nginx is not None:
        result.nginx_config = rig.nginx.config_text
    # Each connection is served by one process of either: its single-connection numbers are one core's.
    gateways, nginxes = len(rig.proxy_pids("gateway tcp")), len(rig.proxy_pids("nginx tcp"))
    result.notes.append(
        f"{gateways} gateway process(es) as the bench's appliance runs (one per core), nginx {max(nginxes - 1, 0)}"
        " worker(s) (auto); one connection is served by one process"
    )

    def part(name: str, action: Callable[[], None]) -> None:
        try:
            action()
        except Exception as exc:  # keep the other parts' numbers; say what broke
            log(f"tcp: {name} failed: {exc!r}")
            result.failed.append(f"{name}: {exc!r}"[:300])

    log(f"tcp: {plan.message_bytes}-byte round trips, {plan.rtt_blocks * plan.rtt_block} per target")
    part("round trips", lambda: _round_trips(targets, plan, result))
    log(f"tcp: new connection + first echo, {plan.setup_rounds} per target")
    part("setup", lambda: _setups(targets, plan, result))
    log(f"tcp: {plan.transfer_mib} MiB down and up, {plan.transfer_rounds} per target")
    part("transfer", lambda: _transfers(rig, targets, plan, result))
    return result
