"""Memory per idle sandbox: create many base sandboxes, let them idle, add up what they hold.

N sandboxes (100; a few creates at a time) with the API's defaults are created
through the API, left idle for a few seconds, then measured:

    cgroup      each container's memory cgroup: usage minus inactive file pages
                (the working set, as `podman stats` reports it); also its RSS
    conmon      the PSS of each container's conmon (outside the cgroup, one per
                container: part of a sandbox's cost)
    host        MemAvailable of the whole machine before the creates and after the
                idle wait (everything: kernel, network namespaces, page cache; noisy)

The headline is (sum of working sets + sum of conmon PSS) / N. Every sandbox is
deleted afterwards, also when something failed.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import procs
from bench.env import BenchAppliance, podman

MB = 1_000_000
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class MemoryPlan:
    sandboxes: int = 100
    parallel: int = 4
    idle_seconds: float = 5.0

    @classmethod
    def quick(cls) -> MemoryPlan:
        return cls(sandboxes=10, idle_seconds=2.0)


@dataclass
class MemoryResult:
    requested: int
    created: int = 0
    failed: list[str] = field(default_factory=list)
    working_set_mb: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    conmon_pss_mb: list[float] = field(default_factory=list)
    host_available_drop_mb: float | None = None
    create_seconds: float = 0.0
    delete_seconds: float = 0.0
    cgroup: str = ""

    def to_json(self) -> dict[str, Any]:
        return {**vars(self), "summary": summarize(self)}


def summarize(result: MemoryResult) -> dict[str, Any]:
    n = len(result.working_set_mb)
    if not n:
        return {"n": 0, "mb_per_sandbox": None}
    cgroup = sum(result.working_set_mb) / n
    conmon = sum(result.conmon_pss_mb) / len(result.conmon_pss_mb) if result.conmon_pss_mb else 0.0
    return {
        "n": n,
        "mb_per_sandbox": cgroup + conmon,
        "cgroup_working_set_mb": cgroup,
        "cgroup_rss_mb": sum(result.rss_mb) / len(result.rss_mb) if result.rss_mb else None,
        "conmon_pss_mb": conmon,
        "host_mb_per_sandbox": result.host_available_drop_mb / n if result.host_available_drop_mb else None,
    }


def parse_memory_stat(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def cgroup_memory(cgroup_path: str, root: Path = CGROUP_ROOT) -> tuple[str, int, int] | None:
    """(layout, working set bytes, RSS bytes) of a container's memory cgroup: the v1
    controller when mounted (this machine's hybrid layout), else the v2 tree."""
    v1 = root / "memory" / cgroup_path.lstrip("/")
    if (v1 / "memory.usage_in_bytes").exists():
        usage = int((v1 / "memory.usage_in_bytes").read_text())
        stat = parse_memory_stat((v1 / "memory.stat").read_text())
        inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
        return "v1", max(0, usage - inactive), stat.get("total_rss", stat.get("rss", 0))
    v2 = root / cgroup_path.lstrip("/")
    if (v2 / "memory.current").exists():
        usage = int((v2 / "memory.current").read_text())
        stat = parse_memory_stat((v2 / "memory.stat").read_text())
        return "v2", max(0, usage - stat.get("inactive_file", 0)), stat.get("anon", 0)
    return None


def mem_available_bytes(meminfo: str | None = None) -> int:
    text = meminfo if meminfo is not None else Path("/proc/meminfo").read_text()
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def _measure(ids: list[str], result: MemoryResult) -> None:
    if not ids:
        return
    for info in json.loads(podman("inspect", "--format", "json", *(f"scalebox-{i}" for i in ids))):
        state = info.get("State", {})
        mem = cgroup_memory(str(state.get("CgroupPath", "")))
        if mem is not None:
            result.cgroup, working, rss = mem
            result.working_set_mb.append(working / MB)
            result.rss_mb.append(rss / MB)
        if state.get("ConmonPid") and (pss := procs.pss_kb(int(state["ConmonPid"]))) is not None:
            result.conmon_pss_mb.append(pss * 1024 / MB)


def run(app: BenchAppliance, plan: MemoryPlan, *, log: Callable[[str], None] = print) -> MemoryResult:
    result = MemoryResult(requested=plan.sandboxes)
    ids: list[str] = []
    with app.client(timeout=120) as api:

        def create(_: int) -> str | None:
            try:
                resp = api.post(f"{app.api_url}/sandboxes", json={"timeout": 3600})
            except Exception as exc:  # counted, and the run goes on
                result.failed.append(repr(exc))
                return None
            if resp.status_code != 201:
                result.failed.append(f"{resp.status_code}: {resp.text[:200]}")
                return None
            return str(resp.json()["data"]["sandbox_id"])

        def delete(sandbox_id: str) -> None:
            # Whatever is left is removed with the appliance (by its instance label).
            with contextlib.suppress(Exception):
                api.delete(f"{app.api_url}/sandboxes/{sandbox_id}")

        log(f"memory: creating {plan.sandboxes} sandboxes, {plan.parallel} at a time")
        before = mem_available_bytes()
        t0 = time.monotonic()
        try:
            with ThreadPoolExecutor(plan.parallel) as pool:
                for sandbox_id in pool.map(create, range(plan.sandboxes)):
                    if sandbox_id is not None:
                        ids.append(sandbox_id)
            result.create_seconds = time.monotonic() - t0
            result.created = len(ids)
            log(f"memory: {len(ids)} created in {result.create_seconds:.0f} s; idle {plan.idle_seconds:g} s, measuring")
            time.sleep(plan.idle_seconds)
            result.host_available_drop_mb = (before - mem_available_bytes()) / MB
            _measure(ids, result)
        finally:
            t1 = time.monotonic()
            with ThreadPoolExecutor(plan.parallel) as pool:
                list(pool.map(delete, ids))
            result.delete_seconds = time.monotonic() - t1
            log(f"memory: {len(ids)} deleted in {result.delete_seconds:.0f} s")
    return result
