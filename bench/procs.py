"""What /proc says about processes: CPU time, children, memory (PSS)."""

from __future__ import annotations

import os
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    """user+system CPU seconds so far of each of these processes that still exists."""
    out = {}
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            out[pid] = (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (fields 14, 15)
    return out


def cpu_seconds(pids: list[int]) -> float:
    """user+system CPU time so far of these processes (those that still exist)."""
    return sum(cpu_by_pid(pids).values())


class CpuMeter:
    """CPU seconds a set of processes spends between start() and stop(); a process that
    ended (or whose pid was reused) meanwhile is left out rather than counted negative."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.before: dict[int, float] = {}

    def start(self) -> None:
        self.before = cpu_by_pid(self.pids)

    def stop(self) -> float:
        after = cpu_by_pid(self.pids)
        return sum(max(0.0, after[p] - t) for p, t in self.before.items() if p in after)


def children(pid: int) -> list[int]:
    """Direct children of pid."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None and int(fields[1]) == pid:
            out.append(int(entry.name))
    return out


def descendants(pid: int) -> list[int]:
    """Every process below pid (children, their children, ...)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def start_time(pid: int) -> int | None:
    """When the process started (clock ticks since boot): with the pid, names one process."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None else None


def exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def same_program(pid: int) -> list[int]:
    """pid and its descendants running the same executable (worker processes of a
    Python server, not the helpers such as podman that it started)."""
    program = exe(pid)
    return [pid, *(p for p in descendants(pid) if program is not None and exe(p) == program)]


def pss_kb(pid: int) -> int | None:
    """Proportional set size in KiB (shared pages divided among their users)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return None
