"""Create-to-ready: the appliance's /v1 API against raw `podman create` + `podman start`.

Appliance: `POST /v1/sandboxes` with the API's defaults (sync: 201 once the
in-sandbox agent answers /health), then `DELETE`. Raw: the podman CLI creates a
container exactly like the appliance's (same image, command, read-only mounts of
the agent, CPU and memory limits: read from the warm-up sandbox's `podman
inspect`), starts it, reads its IP, and polls the same agent's `GET /health` every
20 ms (the appliance's first probe interval) until it answers 2xx; then `podman rm
-f -t 0`. Both clocks run from the first call to the agent's first answer. The two
alternate (ABBA order) after one warm-up each; p50 and p99 over the rounds.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.env import LABEL_INSTANCE, LABEL_MANAGED, BenchAppliance, podman, remove_labelled
from bench.stats import ratio, summary

AGENT_PORT = 8888
POLL_INTERVAL = 0.02
READY_TIMEOUT = 30.0
CREATE_BODY = {"timeout": 300}  # the API's defaults otherwise (as a warm pool serves them)


@dataclass
class CreateResult:
    appliance_create: list[float] = field(default_factory=list)
    appliance_delete: list[float] = field(default_factory=list)
    raw_create: list[float] = field(default_factory=list)
    raw_create_returned: list[float] = field(default_factory=list)
    raw_start_returned: list[float] = field(default_factory=list)
    raw_delete: list[float] = field(default_factory=list)
    raw_command: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            name: {**summary(values), "samples": [round(v, 4) for v in values]}
            for name, values in vars(self).items()
            if name != "raw_command"
        }
        out["raw_command"] = self.raw_command
        out["ratio_create_median"] = ratio(out["appliance_create"]["median"], out["raw_create"]["median"])
        out["ratio_create_p99"] = ratio(out["appliance_create"]["p99"], out["raw_create"]["p99"])
        out["ratio_delete_median"] = ratio(out["appliance_delete"]["median"], out["raw_delete"]["median"])
        return out


def agent_healthy(ip: str, port: int = AGENT_PORT) -> bool:
    """One `GET /health`, as the appliance's probe sends it: True on a 2xx."""
    try:
        with socket.create_connection((ip, port), timeout=2) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
            parts = sock.recv(64).split(b" ", 2)
    except OSError:
        return False
    return len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and parts[1][:1] == b"2"


def raw_create_args(inspect: dict[str, Any], instance: str) -> list[str]:
    """`podman create` arguments for a container like the inspected one (labelled for cleanup)."""
    config, host = inspect.get("Config", {}), inspect.get("HostConfig", {})
    args = ["create", "--label", f"{LABEL_MANAGED}=true", "--label", f"{LABEL_INSTANCE}={instance}"]
    if host.get("CpuQuota"):
        args += ["--cpu-period", str(host.get("CpuPeriod") or 100_000), "--cpu-quota", str(host["CpuQuota"])]
    elif host.get("NanoCpus"):
        args += ["--cpus", str(host["NanoCpus"] / 1e9)]
    if host.get("Memory"):
        args += ["--memory", f"{host['Memory']}b", "--memory-swap", f"{host.get('MemorySwap') or host['Memory']}b"]
    for mount in inspect.get("Mounts", []):
        if mount.get("Type") == "bind":
            ro = "" if mount.get("RW") else ",ro"
            args += ["--mount", f"type=bind,source={mount['Source']},target={mount['Destination']}{ro}"]
    image = inspect.get("ImageName") or config.get("Image")
    if not image:
        raise RuntimeError("the sandbox's inspect names no image")
    return [*args, str(image), *config.get("Cmd", [])]


def _appliance_once(app: BenchAppliance, client: Any, result: CreateResult | None) -> str:
    t0 = time.perf_counter()
    resp = client.post(f"{app.api_url}/sandboxes", json=CREATE_BODY)
    t1 = time.perf_counter()
    if resp.status_code != 201:
        raise RuntimeError(f"create answered {resp.status_code}: {resp.text[:300]}")
    sandbox_id = str(resp.json()["data"]["sandbox_id"])
    inspect = podman("inspect", "--format", "json", f"scalebox-{sandbox_id}") if result is None else "[]"
    t2 = time.perf_counter()
    resp = client.delete(f"{app.api_url}/sandboxes/{sandbox_id}")
    t3 = time.perf_counter()
    if resp.status_code not in (200, 202, 204):
        raise RuntimeError(f"delete of {sandbox_id} answered {resp.status_code}: {resp.text[:300]}")
    if result is not None:
        result.appliance_create.append(t1 - t0)
        result.appliance_delete.append(t3 - t2)
    return inspect


def _raw_once(create_args: list[str], result: CreateResult | None) -> None:
    t0 = time.perf_counter()
    cid = podman(*create_args).strip()
    t_created = time.perf_counter()
    try:
        podman("start", cid)
        t_started = time.perf_counter()
        ip = podman("inspect", "--format", "{{.NetworkSettings.IPAddress}}", cid).strip()
        if not ip:
            raise RuntimeError(f"raw container {cid[:12]} has no IP address")
        deadline = time.monotonic() + READY_TIMEOUT
        while not agent_healthy(ip):
            if time.monotonic() > deadline:
                raise RuntimeError(f"raw container {cid[:12]}'s agent did not answer within {READY_TIMEOUT} s")
            time.sleep(POLL_INTERVAL)
        t1 = time.perf_counter()
    finally:
        t2 = time.perf_counter()
        podman("rm", "-f", "-t", "0", cid)
        t3 = time.perf_counter()
    if result is not None:
        result.raw_create.append(t1 - t0)
        result.raw_create_returned.append(t_created - t0)
        result.raw_start_returned.append(t_started - t0)
        result.raw_delete.append(t3 - t2)


def run(app: BenchAppliance, *, rounds: int, log: Callable[[str], None] = print) -> CreateResult:
    instance = f"bench-{uuid.uuid4().hex[:12]}"
    result = CreateResult()
    try:
        with app.client(timeout=60) as client:
            log(f"create: warm-up, then {rounds} appliance creates interleaved with {rounds} raw podman create+start")
            inspect = json.loads(_appliance_once(app, client, None))[0]
            create_args = raw_create_args(inspect, instance)
            result.raw_command = ["podman", *create_args]
            _raw_once(create_args, None)
            for i in range(rounds):
                if i % 2 == 0:
                    _appliance_once(app, client, result)
                    _raw_once(create_args, result)
                else:
                    _raw_once(create_args, result)
                    _appliance_once(app, client, result)
    finally:
        remove_labelled(LABEL_INSTANCE, instance)
    return result
