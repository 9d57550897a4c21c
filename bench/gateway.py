"""Proxying cost: our gateway against nginx and against talking to the container directly.

One sandbox runs `bench/upstream.py` on port 8000. The same requests then go

    direct         http://<container-ip>:8000/            (the baseline: no proxy)
    nginx http     http://8000-<id>.sbx.localhost:<n>/    (nginx, one worker, keep-alive upstream)
    nginx https    https://...:<n'>/                      (same certificate as the gateway)
    gateway http   http://8000-<id>.sbx.localhost:<port>/
    gateway https  https://8000-<id>.sbx.localhost:<port>/

Every phase visits the targets in rotation, block by block, so that noise on the
shared machine lands on all of them alike:

    latency     sequential GETs on one keep-alive connection per target (p50, p99)
    connect     a new connection (and TLS handshake) per GET
    throughput  `wrk -t1 -c8` for a few seconds per target, several rounds;
                with the proxy's own CPU time per request
    transfer    one large download per target per round, MiB/s
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import client, load
from bench.client import Connection, Target
from bench.env import DOMAIN, BenchAppliance, podman
from bench.nginx import MISSING, Nginx, nginx_path
from bench.stats import median, percentile, summary
from tests.e2e.appliance import free_port

UPSTREAM_PORT = 8000
UPSTREAM_SOURCE = Path(__file__).with_name("upstream.py")


@dataclass(frozen=True)
class GatewayPlan:
    latency_blocks: int = 10
    latency_block: int = 50
    warmup: int = 50
    connect_rounds: int = 50
    load_rounds: int = 3
    load_seconds: int = 3
    load_connections: int = 8
    transfer_rounds: int = 3
    transfer_mib: int = 100

    @classmethod
    def quick(cls) -> GatewayPlan:
        return cls(
            latency_blocks=4,
            latency_block=25,
            warmup=20,
            connect_rounds=15,
            load_rounds=1,
            load_seconds=2,
            transfer_rounds=1,
            transfer_mib=32,
        )


@dataclass
class GatewayResult:
    targets: list[str]
    latency_ms: dict[str, list[float]] = field(default_factory=dict)
    connect_ms: dict[str, list[float]] = field(default_factory=dict)
    rps: dict[str, list[float]] = field(default_factory=dict)
    load_p50_ms: dict[str, list[float]] = field(default_factory=dict)
    load_p99_ms: dict[str, list[float]] = field(default_factory=dict)
    proxy_cpu_us_per_req: dict[str, list[float]] = field(default_factory=dict)
    load_errors: dict[str, int] = field(default_factory=dict)
    transfer_mib_s: dict[str, list[float]] = field(default_factory=dict)
    gateway_internal_ms: list[float] = field(default_factory=list)
    load_tool: str = ""
    notes: list[str] = field(default_factory=list)
    nginx_config: str = ""

    def to_json(self) -> dict[str, Any]:
        def per_target(samples: dict[str, list[float]]) -> dict[str, Any]:
            return {
                name: {**summary(values), "samples": [round(v, 4) for v in values]} for name, values in samples.items()
            }

        return {
            "targets": self.targets,
            "latency_ms": per_target(self.latency_ms),
            "connect_ms": per_target(self.connect_ms),
            "rps": per_target(self.rps),
            "load_p50_ms": per_target(self.load_p50_ms),
            "load_p99_ms": per_target(self.load_p99_ms),
            "proxy_cpu_us_per_req": per_target(self.proxy_cpu_us_per_req),
            "load_errors": self.load_errors,
            "transfer_mib_s": per_target(self.transfer_mib_s),
            "gateway_internal_ms": summary(self.gateway_internal_ms),
            "load_tool": self.load_tool,
            "notes": self.notes,
            "nginx_config": self.nginx_config,
        }


def _container_ip(sandbox_id: str) -> str:
    ip = podman("inspect", "--format", "{{.NetworkSettings.IPAddress}}", f"scalebox-{sandbox_id}").strip()
    if not ip:
        raise RuntimeError(f"sandbox {sandbox_id} has no container IP")
    return ip


def _wait_answering(target: Target, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with Connection(target, timeout=2) as conn:
                conn.get("/")
            return
        except (OSError, client.HttpError) as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{target.name} did not answer within {timeout} s: {exc}") from None
            time.sleep(0.05)


def _rotated(items: list[Target], i: int) -> list[Target]:
    k = i % len(items)
    return items[k:] + items[:k]


def _latency(targets: list[Target], plan: GatewayPlan, result: GatewayResult) -> None:
    conns = {t.name: Connection(t) for t in targets}
    try:
        for t in targets:
            for _ in range(plan.warmup):
                conns[t.name].get("/")
        for block in range(plan.latency_blocks):
            for t in _rotated(targets, block):
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
        for t in _rotated(targets, i):
            result.connect_ms.setdefault(t.name, []).append(client.timed_new_connection(t) * 1000)


def _throughput(
    targets: list[Target], plan: GatewayPlan, result: GatewayResult, proxy_pids: Callable[[str], list[int]]
) -> None:
    for i in range(plan.load_rounds):
        for t in _rotated(targets, i):
            pids = proxy_pids(t.name)
            cpu0 = load.cpu_seconds(pids)
            res = load.run_load(t, connections=plan.load_connections, seconds=plan.load_seconds)
            cpu1 = load.cpu_seconds(pids)
            result.load_tool = res.tool
            result.rps.setdefault(t.name, []).append(res.rps)
            if res.latency_p50_ms is not None:
                result.load_p50_ms.setdefault(t.name, []).append(res.latency_p50_ms)
            if res.latency_p99_ms is not None:
                result.load_p99_ms.setdefault(t.name, []).append(res.latency_p99_ms)
            if pids and res.requests:
                result.proxy_cpu_us_per_req.setdefault(t.name, []).append((cpu1 - cpu0) / res.requests * 1e6)
            result.load_errors[t.name] = result.load_errors.get(t.name, 0) + res.errors


def _transfer(targets: list[Target], plan: GatewayPlan, result: GatewayResult) -> None:
    size = plan.transfer_mib << 20
    for i in range(plan.transfer_rounds):
        for t in _rotated(targets, i):
            with Connection(t, timeout=60) as conn:
                conn.get("/")  # connected and warm: time the body, not the handshake
                t0 = time.perf_counter()
                got = conn.get(f"/bytes/{size}")
                elapsed = time.perf_counter() - t0
            if got != size:
                raise RuntimeError(f"{t.name}: got {got} bytes, wanted {size}")
            result.transfer_mib_s.setdefault(t.name, []).append(plan.transfer_mib / elapsed)


def run(app: BenchAppliance, plan: GatewayPlan, *, log: Callable[[str], None] = print) -> GatewayResult:
    ca_ctx = ssl.create_default_context(cafile=str(app.ca))
    with app.client(timeout=60) as api:
        resp = api.post(f"{app.api_url}/sandboxes", json={"timeout": 600, "cpu_count": 2, "memory_mb": 1024})
        if resp.status_code != 201:
            raise RuntimeError(f"create answered {resp.status_code}: {resp.text[:300]}")
        sandbox_id = str(resp.json()["data"]["sandbox_id"])
        nginx: Nginx | None = None
        try:
            ip = _container_ip(sandbox_id)
            podman(
                "exec", "-d", f"scalebox-{sandbox_id}", "python3", "-c", UPSTREAM_SOURCE.read_text(), str(UPSTREAM_PORT)
            )
            direct = Target("direct", ip, UPSTREAM_PORT, f"{ip}:{UPSTREAM_PORT}")
            _wait_answering(direct)
            label = f"{UPSTREAM_PORT}-{sandbox_id}.{DOMAIN}"
            targets = [direct]
            if nginx_path() is None:
                log(MISSING)
                result_notes = [MISSING + " (nginx columns skipped)"]
            else:
                nginx = Nginx(
                    upstream=f"{ip}:{UPSTREAM_PORT}",
                    plain_port=free_port(),
                    tls_port=free_port(),
                    cert=app.data_dir / "tls" / "server.pem",
                    key=app.data_dir / "tls" / "server-key.pem",
                )
                nginx.start()
                targets += [
                    Target("nginx http", "127.0.0.1", nginx.plain_port, f"{label}:{nginx.plain_port}"),
                    Target("nginx https", "127.0.0.1", nginx.tls_port, f"{label}:{nginx.tls_port}", ca_ctx),
                ]
                result_notes = []
            targets += [
                Target("gateway http", "127.0.0.1", app.port, f"{label}:{app.port}"),
                Target("gateway https", "127.0.0.1", app.port, f"{label}:{app.port}", ca_ctx),
            ]
            for t in targets:
                _wait_answering(t)
            result = GatewayResult(targets=[t.name for t in targets], notes=result_notes)
            if nginx is not None:
                result.nginx_config = nginx.config_text

            def proxy_pids(name: str) -> list[int]:
                if name.startswith("gateway") and app.process is not None:
                    return [app.process.pid]
                if name.startswith("nginx") and nginx is not None:
                    return nginx.pids
                return []

            total = plan.latency_blocks * plan.latency_block
            log(f"gateway: sequential keep-alive latency, {total} GETs per target")
            offset = app.log_offset()
            _latency(targets, plan, result)
            result.gateway_internal_ms = [
                float(e["ms"])
                for e in app.events_since(offset, "gateway.request")
                if e.get("host", "").startswith(label)
            ]
            log(f"gateway: new connection per GET, {plan.connect_rounds} per target")
            _connect(targets, plan, result)
            if load.wrk_path() is None:
                note = "wrk not installed (apt-get install wrk): throughput measured with a Python client, client-bound"
                log(note)
                result.notes.append(note)
            else:
                result.notes.append(
                    "wrk, the proxy and the Python upstream share the 2 cores: nginx and direct req/s are bound by the"
                    " machine, so req/s ratios understate the gap; CPU us per request is the steadier comparison"
                )
            log(
                f"gateway: throughput, {plan.load_rounds} x {plan.load_seconds} s per target, "
                f"{plan.load_connections} connections"
            )
            _throughput(targets, plan, result, proxy_pids)
            log(f"gateway: {plan.transfer_mib} MiB download, {plan.transfer_rounds} per target")
            _transfer(targets, plan, result)
            return result
        finally:
            if nginx is not None:
                nginx.stop()
            api.delete(f"{app.api_url}/sandboxes/{sandbox_id}")


def headline(result: GatewayResult) -> dict[str, dict[str, float]]:
    """Per target: the one number per phase that the table shows."""
    out: dict[str, dict[str, float]] = {}
    for name in result.targets:
        out[name] = {
            "latency_p50_ms": median(result.latency_ms.get(name, [])),
            "latency_p99_ms": percentile(result.latency_ms.get(name, []), 99),
            "connect_p50_ms": median(result.connect_ms.get(name, [])),
            "rps": median(result.rps.get(name, [])),
            "load_p99_ms": median(result.load_p99_ms.get(name, [])),
            "cpu_us_per_req": median(result.proxy_cpu_us_per_req.get(name, [])),
            "transfer_mib_s": median(result.transfer_mib_s.get(name, [])),
        }
    return out
