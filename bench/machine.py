"""What the numbers were measured on: the machine, the tools, the code."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from bench.env import REPO


def _run(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False, cwd=REPO)
    except OSError:
        return ""
    return (out.stdout + out.stderr).strip()


def cpu_model(cpuinfo: str | None = None) -> str:
    text = cpuinfo if cpuinfo is not None else Path("/proc/cpuinfo").read_text()
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_gib(meminfo: str | None = None) -> float:
    text = meminfo if meminfo is not None else Path("/proc/meminfo").read_text()
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / (1 << 20)
    return 0.0


def first_line(text: str) -> str:
    return text.splitlines()[0] if text else "-"


def describe() -> dict[str, str]:
    commit = _run(["git", "rev-parse", "--short", "HEAD"]) or "-"
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"])
    return {
        "machine": f"{os.cpu_count()} cores, {cpu_model()}, {memory_gib():.1f} GiB memory",
        "kernel": f"{platform.system()} {platform.release()}",
        "commit": commit + (" with uncommitted changes" if dirty else ""),
        "nginx": first_line(_run(["nginx", "-v"])).replace("nginx version: ", ""),
        "wrk": first_line(_run(["wrk", "-v"])).split(" [")[0],
        "podman": first_line(_run(["podman", "--version"])),
        "python": platform.python_version(),
    }
