"""The in-sandbox agent through the official SDK: command latency, file transfer, memory.

One sandbox, created with the official sync SDK (`Sandbox.create`), driven through
two `Sandbox` objects of the same SDK class, each reused for the whole run (the
sync SDK pools its connections per object):

    sdk gateway   https://<id>.sbx.localhost:<port>   the way users reach it
    sdk direct    http://<container-ip>:8888          SDK debug mode (`debug_host`), no gateway

Beside them, the raw baselines:

    podman exec   `podman exec <container> true`      the engine's own way to run a command
    https gateway bench.client through the gateway, TLS  (a lean client: no SDK; body discarded)
    http direct   bench.client to <container-ip>:8888    (the same lean client, no gateway)
    podman cp     `podman cp` in and out of the container

so that SDK gateway / https gateway is the SDK's own cost, https gateway / http direct the
gateway's, and http direct the agent's ceiling.

Phases, each visiting the targets in rotation, block by block:

    commands   `commands.run("true")` (the SDK runs `/bin/bash -l -c true`); p50, p99, and
               the CPU that the client, the gateway process and the agent (PID 1) spent per
               call; the floor is `bash -l -c true` spawned inside the container itself
    transfer   one upload and one download of the same file per target per round, MB/s
               (MB = 10^6 bytes); each upload's size is checked (untimed); with how busy the
               client, the gateway and the agent were meanwhile (CPU seconds / wall seconds:
               1.0 is one core; the sandbox's agent has a 1-CPU quota)
    memory     VmRSS of the agent (/proc/1/status through `podman exec`) right after create,
               and once the benchmark is over (VmHWM: its peak meanwhile)

Reading it: commands.run latencies in two bands about 40 ms apart are TCP delayed ACK
meeting Nagle's algorithm (a small write held back on a socket without TCP_NODELAY).

Issue goals: `commands.run` p50 <= 15 ms, transfer >= 200 MB/s both ways, idle RSS <= 25 MB.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import ssl
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import procs
from bench.client import Connection, Target
from bench.env import BenchAppliance, podman
from bench.stats import median, percentile, ratio, summary

AGENT_PORT = 8888
MB = 1_000_000

GOAL_P50_MS = 15.0
GOAL_MB_S = 200.0
GOAL_RSS_MB = 25.0

CMD_TARGETS = ["sdk gateway", "sdk direct", "podman exec"]
XFER_TARGETS = ["sdk gateway", "https gateway", "sdk direct", "http direct", "podman cp"]

# Run inside the sandbox on its own python3: spawn `bash -l -c true` n times, as the
# agent does for commands.run("true"), and print the wall times in ms.
FLOOR_SCRIPT = """
import json, subprocess, sys, time
n = int(sys.argv[1])
out = []
for _ in range(n + 3):
    t0 = time.perf_counter()
    subprocess.run(["/bin/bash", "-l", "-c", "true"], check=True)
    out.append((time.perf_counter() - t0) * 1000)
print(json.dumps(out[3:]))
"""


@dataclass(frozen=True)
class AgentPlan:
    warmup: int = 20
    cmd_blocks: int = 10
    cmd_block: int = 20  # SDK calls per target per block
    exec_block: int = 4  # `podman exec` per block (about 0.2 s each)
    floor_runs: int = 100
    transfer_rounds: int = 3
    transfer_mb: int = 100

    @classmethod
    def quick(cls) -> AgentPlan:
        return cls(
            warmup=10, cmd_blocks=4, cmd_block=15, exec_block=2, floor_runs=30, transfer_rounds=1, transfer_mb=32
        )


@dataclass
class AgentResult:
    cmd_ms: dict[str, list[float]] = field(default_factory=dict)
    floor_ms: list[float] = field(default_factory=list)
    # CPU seconds spent per target in the command phase, by whom; and how many calls
    cpu_s: dict[str, dict[str, float]] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    upload_mb_s: dict[str, list[float]] = field(default_factory=dict)
    download_mb_s: dict[str, list[float]] = field(default_factory=dict)
    # per target, "upload"/"download" -> who -> [CPU s / wall s per transfer]
    busy: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)
    memory_kb: dict[str, dict[str, int]] = field(default_factory=dict)
    sandbox: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def cpu_us_per_call(self) -> dict[str, dict[str, float | None]]:
        return {
            name: {who: (s / self.calls[name] * 1e6 if self.calls.get(name) else None) for who, s in parts.items()}
            for name, parts in self.cpu_s.items()
        }

    def headline(self) -> dict[str, Any]:
        cmd = {name: {"p50_ms": median(v), "p99_ms": percentile(v, 99), "n": len(v)} for name, v in self.cmd_ms.items()}
        cmd["bash -l -c true (in container)"] = {
            "p50_ms": median(self.floor_ms),
            "p99_ms": percentile(self.floor_ms, 99),
            "n": len(self.floor_ms),
        }
        up = {name: median(v) for name, v in self.upload_mb_s.items()}
        down = {name: median(v) for name, v in self.download_mb_s.items()}
        boot = self.memory_kb.get("boot", {}).get("VmRSS")
        after = self.memory_kb.get("after", {}).get("VmRSS")
        return {
            "commands": cmd,
            "upload_mb_s": up,
            "download_mb_s": down,
            "rss_mb": {
                "boot": boot * 1024 / MB if boot else None,
                "after": after * 1024 / MB if after else None,
                "growth": (after - boot) * 1024 / MB if boot and after else None,
                "peak_hwm": self.memory_kb.get("after", {}).get("VmHWM", 0) * 1024 / MB or None,
            },
        }

    def ratios(self) -> dict[str, float | None]:
        h = self.headline()
        c = h["commands"]
        return {
            "cmd p50 sdk gateway / sdk direct": ratio(c["sdk gateway"]["p50_ms"], c["sdk direct"]["p50_ms"]),
            "cmd p50 sdk gateway / podman exec": ratio(c["sdk gateway"]["p50_ms"], c["podman exec"]["p50_ms"]),
            "cmd p50 sdk direct / bash in container": ratio(
                c["sdk direct"]["p50_ms"], c["bash -l -c true (in container)"]["p50_ms"]
            ),
            "upload sdk gateway / https gateway (SDK's share)": self._paired(
                self.upload_mb_s, "sdk gateway", "https gateway"
            ),
            "upload https gateway / http direct (gateway's)": self._paired(
                self.upload_mb_s, "https gateway", "http direct"
            ),
            "upload sdk gateway / sdk direct": self._paired(self.upload_mb_s, "sdk gateway", "sdk direct"),
            "upload sdk gateway / podman cp": self._paired(self.upload_mb_s, "sdk gateway", "podman cp"),
            "upload sdk direct / http direct": self._paired(self.upload_mb_s, "sdk direct", "http direct"),
            "download sdk gateway / https gateway (SDK's share)": self._paired(
                self.download_mb_s, "sdk gateway", "https gateway"
            ),
            "download https gateway / http direct (gateway's)": self._paired(
                self.download_mb_s, "https gateway", "http direct"
            ),
            "download sdk gateway / sdk direct": self._paired(self.download_mb_s, "sdk gateway", "sdk direct"),
            "download sdk gateway / podman cp": self._paired(self.download_mb_s, "sdk gateway", "podman cp"),
            "download sdk direct / http direct": self._paired(self.download_mb_s, "sdk direct", "http direct"),
        }

    @staticmethod
    def _paired(samples: dict[str, list[float]], a: str, b: str) -> float | None:
        """Median of the per-round ratios (rounds are side by side; drift cancels)."""
        pairs = [ratio(x, y) for x, y in zip(samples.get(a, []), samples.get(b, []), strict=False)]
        values = [r for r in pairs if r is not None]
        return median(values) if values else None

    def goals(self) -> dict[str, dict[str, Any]]:
        h = self.headline()
        p50 = h["commands"]["sdk gateway"]["p50_ms"]
        up = h["upload_mb_s"].get("sdk gateway")
        down = h["download_mb_s"].get("sdk gateway")
        rss = h["rss_mb"]["after"] if h["rss_mb"]["after"] is not None else h["rss_mb"]["boot"]
        worst_rss = max(x for x in (h["rss_mb"]["boot"], h["rss_mb"]["after"], 0.0) if x is not None)
        return {
            "commands.run p50 ms (sdk gateway)": {"goal": f"<= {GOAL_P50_MS:g}", "value": p50,
                                                  "met": p50 <= GOAL_P50_MS},
            "upload MB/s (sdk gateway)": {"goal": f">= {GOAL_MB_S:g}", "value": up,
                                          "met": up is not None and up >= GOAL_MB_S},
            "download MB/s (sdk gateway)": {"goal": f">= {GOAL_MB_S:g}", "value": down,
                                            "met": down is not None and down >= GOAL_MB_S},
            "idle agent RSS MB (boot, after)": {"goal": f"<= {GOAL_RSS_MB:g}", "value": rss,
                                                "met": rss is not None and worst_rss <= GOAL_RSS_MB},
        }  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "commands_ms": {n: {**summary(v), "samples": [round(x, 3) for x in v]} for n, v in self.cmd_ms.items()},
            "bash_in_container_ms": {**summary(self.floor_ms), "samples": [round(x, 3) for x in self.floor_ms]},
            "cpu_us_per_call": self.cpu_us_per_call(),
            "upload_mb_s": {
                n: {**summary(v), "samples": [round(x, 1) for x in v]} for n, v in self.upload_mb_s.items()
            },
            "download_mb_s": {
                n: {**summary(v), "samples": [round(x, 1) for x in v]} for n, v in self.download_mb_s.items()
            },
            "busy_median": {
                name: {way: {who: median(v) for who, v in parts.items()} for way, parts in ways.items()}
                for name, ways in self.busy.items()
            },
            "memory_kb": self.memory_kb,
            "headline": self.headline(),
            "ratios": self.ratios(),
            "goals": self.goals(),
            "sandbox": self.sandbox,
            "notes": self.notes,
            "failed": self.failed,
        }


# -- helpers -----------------------------------------------------------------------------


@contextlib.contextmanager
def _sdk_env(app: BenchAppliance) -> Iterator[None]:
    """SBX_API_KEY, SBX_DOMAIN, SSL_CERT_FILE for the SDK while it is used; restored after."""
    new = app.sdk_env()
    old = {k: os.environ.get(k) for k in new}
    os.environ.update(new)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _direct_sandbox(sbx: Any, ip: str) -> Any:
    """The same SDK class, pointed at the agent on the container's IP (the SDK's debug mode)."""
    from scalebox.connection_config import ConnectionConfig
    from scalebox.sandbox_sync import Sandbox

    config = ConnectionConfig(
        debug=True, debug_host=f"http://{ip}:{AGENT_PORT}", headers=dict(sbx.connection_config.headers)
    )
    return Sandbox(
        sandbox_id=sbx.sandbox_id,
        sandbox_domain=None,
        envd_version=None,
        envd_access_token=sbx.connection_config.headers.get("X-Access-Token"),
        connection_config=config,
        object_storage=None,
        network_proxy=None,
    )


def _close_sdk(sbx: Any) -> None:
    """Close an SDK object's pools (it has no close of its own)."""
    with contextlib.suppress(Exception):
        sbx._envd_api.close()
    with contextlib.suppress(Exception):
        sbx._urllib3_pool.clear()


def _status_kb(container: str) -> dict[str, int]:
    text = podman("exec", container, "cat", "/proc/1/status")
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "VmSize"):
            out[name] = int(value.split()[0])
    return out


def _meters(pids: dict[str, Callable[[], list[int]]]) -> dict[str, procs.CpuMeter]:
    """Started CPU meters, one per party, on its processes of the moment."""
    meters = {who: procs.CpuMeter(find()) for who, find in pids.items()}
    for meter in meters.values():
        meter.start()
    return meters


def _rotated(items: list[str], i: int) -> list[str]:
    k = i % len(items)
    return items[k:] + items[:k]


# -- phases ------------------------------------------------------------------------------


def _commands(
    calls: dict[str, Callable[[], object]],
    plan: AgentPlan,
    result: AgentResult,
    pids: dict[str, Callable[[], list[int]]],
) -> None:
    for name, call in calls.items():
        for _ in range(plan.warmup if name != "podman exec" else 2):
            call()
    for block in range(plan.cmd_blocks):
        for name in _rotated(list(calls), block):
            call = calls[name]
            n = plan.exec_block if name == "podman exec" else plan.cmd_block
            samples = result.cmd_ms.setdefault(name, [])
            cpu = result.cpu_s.setdefault(name, {})
            meters = _meters(pids)
            client0 = time.process_time()
            for _ in range(n):
                t0 = time.perf_counter()
                call()
                samples.append((time.perf_counter() - t0) * 1000)
            cpu["client"] = cpu.get("client", 0.0) + time.process_time() - client0
            for who, meter in meters.items():
                cpu[who] = cpu.get(who, 0.0) + meter.stop()
            result.calls[name] = result.calls.get(name, 0) + n


def _floor(container: str, runs: int) -> list[float]:
    return [float(x) for x in json.loads(podman("exec", container, "python3", "-c", FLOOR_SCRIPT, str(runs)))]


def _multipart(path: str, data: bytes) -> tuple[str, list[bytes | memoryview]]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="path"\r\n\r\n{path}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return f"multipart/form-data; boundary={boundary}", [head, memoryview(data), f"\r\n--{boundary}--\r\n".encode()]


def _transfer(
    sdks: dict[str, Any],
    lean: dict[str, Target],
    token: str,
    container: str,
    plan: AgentPlan,
    result: AgentResult,
    host_dir: Path,
    pids: dict[str, Callable[[], list[int]]],
) -> None:
    size = plan.transfer_mb * MB
    data = os.urandom(size)
    host_src = host_dir / "up.bin"
    host_src.write_bytes(data)
    auth = [("X-Access-Token", token), ("Authorization", "Bearer root")]
    checker = sdks["sdk gateway"]

    def remote(name: str) -> str:
        return f"/tmp/bench-{name.replace(' ', '-')}.bin"

    def upload(name: str) -> None:
        path = remote(name)
        if name in sdks:
            sdks[name].files.write(path, data)
        elif name in lean:
            ctype, body = _multipart(path, data)
            with Connection(lean[name], timeout=120) as conn:
                conn.request("POST", "/upload", headers=[*auth, ("Content-Type", ctype)], body=body)
        else:
            podman("cp", str(host_src), f"{container}:{path}")

    def download(name: str) -> int:
        path = remote(name)
        if name in sdks:
            return len(sdks[name].files.read(path, format="bytes"))
        if name in lean:
            with Connection(lean[name], timeout=120) as conn:
                return conn.get(f"/download{path}", headers=auth)
        dst = host_dir / "down.bin"
        podman("cp", f"{container}:{path}", str(dst))
        got = dst.stat().st_size
        dst.unlink()
        return got

    def timed(name: str, way: str, action: Callable[[], object]) -> tuple[float, object]:
        meters = _meters(pids)
        client0 = time.process_time()
        t0 = time.perf_counter()
        out = action()
        elapsed = time.perf_counter() - t0
        busy = result.busy.setdefault(name, {}).setdefault(way, {})
        if name != "podman cp":  # its client is the podman CLI, another process
            busy.setdefault("client", []).append((time.process_time() - client0) / elapsed)
        for who, meter in meters.items():
            busy.setdefault(who, []).append(meter.stop() / elapsed)
        return elapsed, out

    for i in range(plan.transfer_rounds):
        for name in _rotated(XFER_TARGETS, i):
            elapsed, _ = timed(name, "upload", lambda: upload(name))  # noqa: B023 - called at once
            stored = checker.files.get_info(remote(name)).size
            if stored != size:
                raise RuntimeError(f"{name}: upload stored {stored} bytes, wanted {size}")
            result.upload_mb_s.setdefault(name, []).append(size / MB / elapsed)
            elapsed, got = timed(name, "download", lambda: download(name))  # noqa: B023
            if got != size:
                raise RuntimeError(f"{name}: downloaded {got} bytes, wanted {size}")
            result.download_mb_s.setdefault(name, []).append(size / MB / elapsed)
    for name in XFER_TARGETS:
        with contextlib.suppress(Exception):
            checker.files.remove(remote(name))


def run(app: BenchAppliance, plan: AgentPlan, *, log: Callable[[str], None] = print) -> AgentResult:
    result = AgentResult()
    host_dir: Path | None = None
    with _sdk_env(app):
        from scalebox.sandbox_sync import Sandbox

        log("agent: creating a sandbox with the official SDK")
        sbx = Sandbox.create(timeout=600)
        direct: Any = None
        try:
            container = f"scalebox-{sbx.sandbox_id}"
            result.memory_kb["boot"] = _status_kb(container)
            host_dir = Path(tempfile.mkdtemp(prefix="bench-agent-", dir="/tmp"))
            inspect = json.loads(podman("inspect", "--format", "json", container))[0]
            ip = inspect["NetworkSettings"]["IPAddress"]
            host_cfg = inspect.get("HostConfig", {})
            result.sandbox = {
                "id": sbx.sandbox_id,
                "nano_cpus": host_cfg.get("NanoCpus"),
                "memory_bytes": host_cfg.get("Memory"),
            }
            agent_pid = int(inspect["State"]["Pid"])
            if not ip:
                raise RuntimeError(f"sandbox {sbx.sandbox_id} has no container IP")
            direct = _direct_sandbox(sbx, ip)
            token = str(sbx.connection_config.headers.get("X-Access-Token", ""))
            app_pid = app.process.pid if app.process else None
            pids: dict[str, Callable[[], list[int]]] = {
                # Looked up at each measurement: the gateway's worker processes may be replaced.
                "gateway": lambda: procs.same_program(app_pid) if app_pid else [],
                "agent": lambda: [agent_pid],
            }

            calls: dict[str, Callable[[], object]] = {
                "sdk gateway": lambda: sbx.commands.run("true"),
                "sdk direct": lambda: direct.commands.run("true"),
                "podman exec": lambda: podman("exec", container, "true"),
            }
            n_sdk = plan.cmd_blocks * plan.cmd_block
            log(
                f"agent: commands.run('true'), {n_sdk} per SDK target and "
                f"{plan.cmd_blocks * plan.exec_block} podman exec, interleaved"
            )
            result.floor_ms += _floor(container, plan.floor_runs // 2)
            _commands(calls, plan, result, pids)
            result.floor_ms += _floor(container, plan.floor_runs - plan.floor_runs // 2)

            log(f"agent: {plan.transfer_mb} MB upload + download, {plan.transfer_rounds} per target")
            ca_ctx = ssl.create_default_context(cafile=str(app.ca))
            lean = {
                "https gateway": Target("https gateway", "127.0.0.1", app.port, sbx.sandbox_domain, ca_ctx),
                "http direct": Target("http direct", ip, AGENT_PORT, f"{ip}:{AGENT_PORT}"),
            }
            sdks = {"sdk gateway": sbx, "sdk direct": direct}
            try:
                _transfer(sdks, lean, token, container, plan, result, host_dir, pids)
            except Exception as exc:  # keep the command numbers; say what broke
                log(f"agent: transfers failed: {exc!r}")
                result.failed.append(f"transfers: {exc!r}"[:300])

            time.sleep(1.0)  # let the agent settle to idle
            result.memory_kb["after"] = _status_kb(container)
            result.notes.append(
                "commands.run runs `/bin/bash -l -c true` in the sandbox; `podman exec` runs `true` directly"
            )
            result.notes.append(
                "CPU per call: client = this process (SDK), gateway = the appliance process, agent = PID 1 of the"
                " container (its children excluded); 10 ms clock ticks summed over all calls"
            )
            return result
        finally:
            if direct is not None:
                _close_sdk(direct)
            try:
                sbx.kill()
            finally:
                _close_sdk(sbx)
                if host_dir is not None:
                    shutil.rmtree(host_dir, ignore_errors=True)
