"""Throughput under concurrency: `wrk` when installed, else a small in-process client.

wrk (C, epoll, one thread here) can drive far more requests than any proxy under
test on this machine, so the proxies are the bottleneck. The fallback is Python
(asyncio, 1 process) and is likely as slow as the proxy it measures: its numbers
are marked as client-bound.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.client import Target

_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    errors: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    tool: str

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk_path() -> str | None:
    return shutil.which("wrk")


def _to_ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value.strip())
    if not m:
        raise ValueError(f"unparsable wrk latency {value!r}")
    number, unit = float(m.group(1)), m.group(2)
    return number * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def parse_wrk(text: str) -> LoadResult:
    m = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", text)
    if not m:
        raise ValueError(f"unexpected wrk output:\n{text}")
    seconds = float(m.group(2)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[m.group(3)]
    errors = 0
    if e := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
        errors += sum(int(x) for x in e.groups())
    if e := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        errors += int(e.group(1))
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
    return LoadResult(
        requests=int(m.group(1)),
        seconds=seconds,
        errors=errors,
        latency_p50_ms=_to_ms(p50.group(1)) if p50 else None,
        latency_p99_ms=_to_ms(p99.group(1)) if p99 else None,
        tool="wrk",
    )


def run_wrk(target: Target, *, connections: int, seconds: int) -> LoadResult:
    wrk = wrk_path()
    assert wrk is not None
    cmd = [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s", target.url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    return parse_wrk(out.stdout)


async def _client_loop(target: Target, deadline: float, counts: list[int], errors: list[int]) -> None:
    request = f"GET / HTTP/1.1\r\nHost: {target.host}\r\n\r\n".encode()
    server_hostname = target.host.rsplit(":", 1)[0] if target.tls else None
    reader, writer = await asyncio.open_connection(
        target.ip, target.port, ssl=target.tls, server_hostname=server_hostname
    )
    try:
        while time.monotonic() < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            if head.startswith(b"HTTP/1.1 200"):
                counts[0] += 1
            else:
                errors[0] += 1
    finally:
        writer.close()


def run_python(target: Target, *, connections: int, seconds: int) -> LoadResult:
    counts, errors = [0], [0]

    async def main() -> float:
        deadline = time.monotonic() + seconds
        t0 = time.monotonic()
        await asyncio.gather(*(_client_loop(target, deadline, counts, errors) for _ in range(connections)))
        return time.monotonic() - t0

    elapsed = asyncio.run(main())
    return LoadResult(counts[0], elapsed, errors[0], None, None, "python-asyncio (client-bound)")


def run_load(target: Target, *, connections: int, seconds: int) -> LoadResult:
    if wrk_path():
        return run_wrk(target, connections=connections, seconds=seconds)
    return run_python(target, connections=connections, seconds=seconds)


def cpu_seconds(pids: list[int]) -> float:
    """user+system CPU time so far of these processes (those that still exist)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / _CLK_TCK


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry.name))
    return out
