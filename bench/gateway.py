"""HTTP proxying cost: our gateway against nginx and against the upstream directly.

On the rig of `bench.rig` (one upstream; direct, nginx http/https, gateway
http/https). Every phase visits the targets in rotation, round by round, so that
noise on the shared machine lands on all of them alike:

    latency     sequential GETs on one keep-alive connection per target (p50, p99):
                the cost of a proxy on an idle machine
    connect     a new connection (and TLS handshake) per GET, one at a time
    load        `wrk -t1 --latency` for a few seconds per target at 64 and at 256
                keep-alive connections, several rounds: req/s, p50, p99, and the
                proxy's own CPU time per request; "added" latency is the target's
                percentile minus direct's in the same round
    handshakes  new TLS handshakes/s over https, a new TCP connection per request:
                full handshakes (bench.handshakes: nothing resumed), and resumed ones
                (`wrk -H 'Connection: close'`: wrk resumes its TLS session)
    transfer    one large download per target per round, MiB/s
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench import client, handshakes, load, procs
from bench.client import Connection, Target
from bench.rig import Rig, rotated
from bench.stats import median, paired, percentile, ratio, summary

HANDSHAKE_TARGETS = ("nginx https", "gateway https")


@dataclass(frozen=True)
class GatewayPlan:
    latency_blocks: int = 6
    latency_block: int = 50
    warmup: int = 50
    connect_rounds: int = 30
    load_rounds: int = 3
    load_seconds: int = 5
    load_connections: tuple[int, ...] = (64, 256)
    handshake_connections: int = 32  # wrk's, for resumed handshakes
    handshake_processes: int = 4  # full handshakes: client processes x threads
    handshake_threads: int = 4
    transfer_rounds: int = 2
    transfer_mib: int = 100

    @classmethod
    def quick(cls) -> GatewayPlan:
        return cls(
            latency_blocks=3,
            latency_block=25,
            warmup=20,
            connect_rounds=10,
            load_rounds=1,
            load_seconds=2,
            transfer_rounds=1,
            transfer_mib=32,
        )


@dataclass
class LoadSamples:
    """One target at one concurrency: a value per round."""

    rps: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    cpu_us_per_req: list[float] = field(default_factory=list)
    errors: int = 0

    def add(self, res: load.LoadResult, cpu_s: float | None) -> None:
        self.rps.append(res.rps)
        if res.latency_p50_ms is not None:
            self.p50_ms.append(res.latency_p50_ms)
        if res.latency_p99_ms is not None:
            self.p99_ms.append(res.latency_p99_ms)
        if cpu_s is not None and res.requests:
            self.cpu_us_per_req.append(cpu_s / res.requests * 1e6)
        self.errors += res.errors

    def to_json(self) -> dict[str, Any]:
        return {
            "rps": self.rps,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "cpu_us_per_req": self.cpu_us_per_req,
            "errors": self.errors,
        }


@dataclass
class GatewayResult:
    targets: list[str]
    latency_ms: dict[str, list[float]] = field(default_factory=dict)
    connect_ms: dict[str, list[float]] = field(default_factory=dict)
    load: dict[int, dict[str, LoadSamples]] = field(default_factory=dict)  # connections -> target -> samples
    handshakes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # full handshakes, per round
    resumed: dict[str, LoadSamples] = field(default_factory=dict)
    transfer_mib_s: dict[str, list[float]] = field(default_factory=dict)
    gateway_internal_ms: list[float] = field(default_factory=list)
    load_tool: str = ""
    notes: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    nginx_config: str = ""

    def samples(self, connections: int, name: str) -> LoadSamples:
        return self.load.setdefault(connections, {}).setdefault(name, LoadSamples())

    def to_json(self) -> dict[str, Any]:
        def per_target(samples: dict[str, list[float]]) -> dict[str, Any]:
            return {name: {**summary(v), "samples": [round(x, 4) for x in v]} for name, v in samples.items()}

        return {
            "targets": self.targets,
            "latency_ms": per_target(self.latency_ms),
            "connect_ms": per_target(self.connect_ms),
            "load": {str(c): {n: s.to_json() for n, s in by.items()} for c, by in self.load.items()},
            "handshakes": self.handshakes,
            "resumed_handshakes": {n: s.to_json() for n, s in self.resumed.items()},
            "transfer_mib_s": per_target(self.transfer_mib_s),
            "gateway_internal_ms": summary(self.gateway_internal_ms),
            "load_tool": self.load_tool,
            "notes": self.notes,
            "failed": self.failed,
            "nginx_config": self.nginx_config,
            "summary": summarize(self),
        }


def _minus(x: float, y: float) -> float:
    return x - y


def summarize(result: GatewayResult) -> dict[str, Any]:
    """The numbers the report shows: per concurrency and target, medians over rounds,
    latency added over direct's and ratios of paired rounds."""
    out: dict[str, Any] = {"load": {}, "handshakes": {}, "sequential": {}}
    for conns, by_target in result.load.items():
        direct = by_target.get("direct")
        rows: dict[str, Any] = {}
        for name, s in by_target.items():
            rows[name] = {
                "rps": median(s.rps),
                "p50_ms": median(s.p50_ms),
                "p99_ms": median(s.p99_ms),
                "added_p50_ms": paired(s.p50_ms, direct.p50_ms, _minus) if direct and name != "direct" else None,
                "added_p99_ms": paired(s.p99_ms, direct.p99_ms, _minus) if direct and name != "direct" else None,
                "cpu_us_per_req": median(s.cpu_us_per_req),
                "errors": s.errors,
            }
        for ours, theirs in (("gateway http", "nginx http"), ("gateway https", "nginx https")):
            if ours in by_target and theirs in by_target:
                rows[ours]["rps_ratio_vs_nginx"] = paired(by_target[ours].rps, by_target[theirs].rps, ratio)
        out["load"][str(conns)] = rows

    def column(name: str, key: str) -> list[float]:
        return [r[key] for r in result.handshakes.get(name, []) if r.get(key) is not None]

    for name, rounds in result.handshakes.items():
        out["handshakes"][name] = {
            "per_s": median(column(name, "per_s")),
            "errors": sum(r["errors"] for r in rounds),
            "resumed": sum(r["resumed"] for r in rounds),
            "client_busy": median(column(name, "client_busy")),
            "proxy_cpu_us": median(column(name, "proxy_cpu_us")),
        }
    if "gateway https" in result.handshakes and "nginx https" in result.handshakes:
        out["handshakes"]["ratio"] = paired(column("gateway https", "per_s"), column("nginx https", "per_s"), ratio)
    out["resumed_handshakes"] = {
        name: {"per_s": median(s.rps), "errors": s.errors, "proxy_cpu_us": median(s.cpu_us_per_req)}
        for name, s in result.resumed.items()
    }
    if "gateway https" in result.resumed and "nginx https" in result.resumed:
        out["resumed_handshakes"]["ratio"] = paired(
            result.resumed["gateway https"].rps, result.resumed["nginx https"].rps, ratio
        )
    for name in result.targets:
        lat = result.latency_ms.get(name, [])
        out["sequential"][name] = {
            "p50_ms": median(lat),
            "p99_ms": percentile(lat, 99),
            "connect_p50_ms": median(result.connect_ms.get(name, [])),
            "transfer_mib_s": median(result.transfer_mib_s.get(name, [])),
        }
    return out


# -- phases ------------------------------------------------------------------------------


def _latency(targets: list[Target], plan: GatewayPlan, result: GatewayResult) -> None:
    conns = {t.name: Connection(t) for t in targets}
    try:
        for t in targets:
            for _ in range(plan.warmup):
                conns[t.name].get("/")
        for block in range(plan.latency_blocks):
            for t in rotated(targets, block):
                conn = conns[t.name]
                samples = result.latency_ms.setdefault(t.name, [])
                for _ in range(plan.latency_block):
                    samples.append(client.timed_get(conn) * 1000)
    finally:
        for conn in conns.values():
            conn.close()


def _connect(targets: list[Target], plan: GatewayPlan, result: GatewayResult) -> None:
    for t in targets:
        client.timed_new_connection(t)
    for i in range(plan.connect_rounds):
        for t in rotated(targets, i):
            result.connect_ms.setdefault(t.name, []).append(client.timed_new_connection(t) * 1000)


def _wrk(
    rig: Rig, t: Target, *, connections: int, seconds: int, close: bool = False
) -> tuple[load.LoadResult, float | None]:
    """One wrk run, and the CPU seconds the target's proxy spent meanwhile (None: no proxy)."""
    meter = procs.CpuMeter(rig.proxy_pids(t.name))
    meter.start()
    res = load.run_load(t, connections=connections, seconds=seconds, close=close)
    cpu = meter.stop()
    return res, cpu if meter.pids else None


def _load(rig: Rig, plan: GatewayPlan, result: GatewayResult) -> None:
    for i in range(plan.load_rounds):
        for conns in plan.load_connections:
            for t in rotated(rig.targets, i):
                res, cpu = _wrk(rig, t, connections=conns, seconds=plan.load_seconds)
                result.load_tool = res.tool
                result.samples(conns, t.name).add(res, cpu)


def _handshakes(rig: Rig, plan: GatewayPlan, result: GatewayResult) -> None:
    targets = [t for t in rig.targets if t.name in HANDSHAKE_TARGETS]
    for i in range(plan.load_rounds):
        for t in rotated(targets, i):
            meter = procs.CpuMeter(rig.proxy_pids(t.name))
            meter.start()
            full = handshakes.run(
                t,
                cafile=str(rig.app.ca),
                seconds=plan.load_seconds,
                processes=plan.handshake_processes,
                threads=plan.handshake_threads,
            )
            cpu = meter.stop()
            result.handshakes.setdefault(t.name, []).append(
                {
                    "per_s": full.per_s,
                    "errors": full.errors,
                    "resumed": full.resumed,
                    "client_busy": full.client_busy,
                    "proxy_cpu_us": cpu / full.handshakes * 1e6 if full.handshakes else None,
                }
            )
            if load.wrk_path() is not None:
                res, wcpu = _wrk(rig, t, connections=plan.handshake_connections, seconds=plan.load_seconds, close=True)
                result.resumed.setdefault(t.name, LoadSamples()).add(res, wcpu)


def _transfer(targets: list[Target], plan: GatewayPlan, result: GatewayResult) -> None:
    size = plan.transfer_mib << 20
    for i in range(plan.transfer_rounds):
        for t in rotated(targets, i):
            with Connection(t, timeout=60) as conn:
                conn.get("/")  # connected and warm: time the body, not the handshake
                t0 = time.perf_counter()
                got = conn.get(f"/bytes/{size}")
                elapsed = time.perf_counter() - t0
            if got != size:
                raise RuntimeError(f"{t.name}: got {got} bytes, wanted {size}")
            result.transfer_mib_s.setdefault(t.name, []).append(plan.transfer_mib / elapsed)


NOTES = [
    "wrk (one thread), the proxy and the Python upstream share the 2 cores: direct and nginx are bound by the"
    " upstream and the machine, so req/s ratios understate a gap; CPU us per request is steadier",
    "a full TLS handshake costs the client (OpenSSL 3.0, Python) about as much CPU as the server: on 2 shared"
    " cores that narrows the handshakes/s gap; proxy CPU per handshake is the server's own cost",
    "each wrk run opens its connections at its start: over https its req/s include those handshakes (256 of"
    " them at the handshake rate below), its percentiles do not",
]


def run(rig: Rig, plan: GatewayPlan, *, log: Callable[[str], None] = print) -> GatewayResult:
    """Every part in turn; a part that fails is recorded in `failed` and the others still run."""
    app, targets = rig.app, rig.targets
    result = GatewayResult(targets=[t.name for t in targets], notes=list(rig.notes))
    if rig.nginx is not None:
        result.nginx_config = rig.nginx.config_text
    if load.wrk_path() is None:
        note = "wrk not installed (apt-get install wrk): throughput measured with a Python client, client-bound"
        log(note)
        result.notes.append(note)
    else:
        result.notes += NOTES

    def part(name: str, action: Callable[[], None]) -> None:
        try:
            action()
        except Exception as exc:  # keep the other parts' numbers; say what broke
            log(f"gateway: {name} failed: {exc!r}")
            result.failed.append(f"{name}: {exc!r}"[:300])

    def latency() -> None:
        offset = app.log_offset()
        _latency(targets, plan, result)
        result.gateway_internal_ms = [
            float(e["ms"])
            for e in app.events_since(offset, "gateway.request")
            if e.get("host", "").startswith(rig.label)
        ]

    log(f"gateway: sequential keep-alive latency, {plan.latency_blocks * plan.latency_block} GETs per target")
    part("sequential latency", latency)
    log(f"gateway: new connection per GET, {plan.connect_rounds} per target")
    part("new connections", lambda: _connect(targets, plan, result))
    levels = " and ".join(str(c) for c in plan.load_connections)
    log(f"gateway: wrk keep-alive, {plan.load_rounds} x {plan.load_seconds} s per target at {levels} connections")
    part("keep-alive load", lambda: _load(rig, plan, result))
    log(f"gateway: new TLS handshakes, full and resumed, {plan.load_rounds} x {plan.load_seconds} s each per target")
    part("TLS handshakes", lambda: _handshakes(rig, plan, result))
    log(f"gateway: {plan.transfer_mib} MiB download, {plan.transfer_rounds} per target")
    part("large download", lambda: _transfer(targets, plan, result))
    return result
