"""Create-to-ready and delete: the appliance's /v1 API against raw `podman run`.

Appliance: `POST /v1/sandboxes` (sync: 201 once the in-sandbox agent answers
/health), then `DELETE`. Raw: `podman run -d --rm` of the same image running
`python3 -m http.server 8888`, `podman inspect` for its IP, polling until it
answers on IP:8888 every 20 ms (the appliance's own probe interval), then
`podman rm -f -t 0`. The two alternate (ABBA order), after one warm-up each.
"""

from __future__ import annotations

import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from bench.env import IMAGE, LABEL_INSTANCE, LABEL_MANAGED, BenchAppliance, podman, remove_labelled
from bench.stats import ratio, summary

POLL_INTERVAL = 0.02
READY_TIMEOUT = 30.0


@dataclass
class CreateResult:
    appliance_create: list[float] = field(default_factory=list)
    appliance_delete: list[float] = field(default_factory=list)
    raw_create: list[float] = field(default_factory=list)
    raw_run_returned: list[float] = field(default_factory=list)
    raw_delete: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            name: {**summary(values), "samples": [round(v, 4) for v in values]} for name, values in vars(self).items()
        }
        out["ratio_create_median"] = ratio(out["appliance_create"]["median"], out["raw_create"]["median"])
        out["ratio_create_p90"] = ratio(out["appliance_create"]["p90"], out["raw_create"]["p90"])
        out["ratio_delete_median"] = ratio(out["appliance_delete"]["median"], out["raw_delete"]["median"])
        return out


def _http_answers(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=2) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            return sock.recv(16).startswith(b"HTTP/1.")
    except OSError:
        return False


def _appliance_once(app: BenchAppliance, client: Any, result: CreateResult | None) -> None:
    t0 = time.perf_counter()
    resp = client.post(f"{app.api_url}/sandboxes", json={"timeout": 300, "cpu_count": 1, "memory_mb": 512})
    t1 = time.perf_counter()
    if resp.status_code != 201:
        raise RuntimeError(f"create answered {resp.status_code}: {resp.text[:300]}")
    sandbox_id = resp.json()["data"]["sandbox_id"]
    t2 = time.perf_counter()
    resp = client.delete(f"{app.api_url}/sandboxes/{sandbox_id}")
    t3 = time.perf_counter()
    if resp.status_code not in (200, 202, 204):
        raise RuntimeError(f"delete of {sandbox_id} answered {resp.status_code}: {resp.text[:300]}")
    if result is not None:
        result.appliance_create.append(t1 - t0)
        result.appliance_delete.append(t3 - t2)


def _raw_once(instance: str, result: CreateResult | None) -> None:
    t0 = time.perf_counter()
    cid = podman(
        "run", "-d", "--rm", "--label", f"{LABEL_MANAGED}=true", "--label", f"{LABEL_INSTANCE}={instance}",
        "--cpus", "1", "--memory", "512m", IMAGE, "python3", "-m", "http.server", "8888",
    ).strip()  # fmt: skip
    t_run = time.perf_counter()
    try:
        ip = podman("inspect", "--format", "{{.NetworkSettings.IPAddress}}", cid).strip()
        if not ip:
            raise RuntimeError(f"raw container {cid[:12]} has no IP address")
        deadline = time.monotonic() + READY_TIMEOUT
        while not _http_answers(ip, 8888):
            if time.monotonic() > deadline:
                raise RuntimeError(f"raw container {cid[:12]} did not answer on {ip}:8888 within {READY_TIMEOUT} s")
            time.sleep(POLL_INTERVAL)
        t1 = time.perf_counter()
    finally:
        t2 = time.perf_counter()
        podman("rm", "-f", "-t", "0", cid)
        t3 = time.perf_counter()
    if result is not None:
        result.raw_create.append(t1 - t0)
        result.raw_run_returned.append(t_run - t0)
        result.raw_delete.append(t3 - t2)


def run(app: BenchAppliance, *, rounds: int, log: Any = print) -> CreateResult:
    instance = f"bench-{uuid.uuid4().hex[:12]}"
    result = CreateResult()
    try:
        with app.client(timeout=60) as client:
            log(f"create: warm-up, then {rounds} appliance creates interleaved with {rounds} raw podman runs")
            _appliance_once(app, client, None)
            _raw_once(instance, None)
            for i in range(rounds):
                if i % 2 == 0:
                    _appliance_once(app, client, result)
                    _raw_once(instance, result)
                else:
                    _raw_once(instance, result)
                    _appliance_once(app, client, result)
    finally:
        remove_labelled(LABEL_INSTANCE, instance)
    return result
