"""Throughput under concurrency: `wrk` when installed, else a small in-process client.

wrk (C, epoll, one thread here) can drive far more requests than any proxy under
test on this machine, so the proxies are the bottleneck. The fallback is Python
(asyncio, 1 process) and is likely as slow as the proxy it measures: its numbers
are marked as client-bound.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from dataclasses import dataclass

from bench.client import Target


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    errors: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    tool: str
    non_2xx: int = 0  # among `requests` (and in `errors`)

    @property
    def rps(self) -> float:
        """Successful (2xx or 3xx) responses per second."""
        return (self.requests - self.non_2xx) / self.seconds if self.seconds else 0.0


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
    errors = non_2xx = 0
    if e := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
        errors += sum(int(x) for x in e.groups())
    if e := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        non_2xx = int(e.group(1))
        errors += non_2xx
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
    return LoadResult(
        requests=int(m.group(1)),
        seconds=seconds,
        errors=errors,
        latency_p50_ms=_to_ms(p50.group(1)) if p50 else None,
        latency_p99_ms=_to_ms(p99.group(1)) if p99 else None,
        tool="wrk",
        non_2xx=non_2xx,
    )


def wrk_command(
    wrk: str, target: Target, *, connections: int, seconds: int, threads: int = 1, close: bool = False
) -> list[str]:
    """The wrk command line; `close` sends `Connection: close` (a new connection, and over
    https a full TLS handshake, per request: wrk does not resume sessions)."""
    cmd = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    if close:
        cmd += ["-H", "Connection: close"]
    return [*cmd, target.url]


def run_wrk(target: Target, *, connections: int, seconds: int, threads: int = 1, close: bool = False) -> LoadResult:
    wrk = wrk_path()
    assert wrk is not None
    cmd = wrk_command(wrk, target, connections=connections, seconds=seconds, threads=threads, close=close)
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


def run_load(target: Target, *, connections: int, seconds: int, close: bool = False) -> LoadResult:
    if wrk_path():
        return run_wrk(target, connections=connections, seconds=seconds, close=close)
    if close:
        raise RuntimeError("new-connection load needs wrk (apt-get install wrk)")
    return run_python(target, connections=connections, seconds=seconds)
