"""The things every benchmark stands on: a real appliance, the podman CLI, cleanup.

The appliance is `tests.e2e.appliance.Appliance` with one change: its log goes to
a file in the data dir instead of a pipe read by a thread in this process, so the
benchmark client does not share its interpreter with a log reader (nginx writes
its access log to a file too).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import procs
from tests.e2e.appliance import DOMAIN, REPO, SCALEBOX, Appliance, podman

__all__ = ["DOMAIN", "REPO", "BenchAppliance", "podman", "remove_labelled", "running_appliance"]

IMAGE = "localhost/scalebox/base:latest"
LABEL_MANAGED = "io.scalebox.managed"
LABEL_INSTANCE = "io.scalebox.instance"


# Appliance settings the bench decides itself, not the caller's environment.
CONTROLLED_ENV = ("SCALEBOX_WARM_POOL",)


@dataclass
class BenchAppliance(Appliance):
    log_path: Path = field(default_factory=lambda: Path("/dev/null"))
    extra_env: dict[str, str] = field(default_factory=dict)

    def start(self, timeout: float = 60.0) -> None:
        self.log_path = self.data_dir / "appliance.log"
        env = {k: v for k, v in os.environ.items() if k not in CONTROLLED_ENV}
        env.update(PYTHONUNBUFFERED="1", **self.extra_env)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(SCALEBOX), "serve", "--data-dir", str(self.data_dir), "--domain", DOMAIN,
                 "--listen", f"127.0.0.1:{self.port},[::1]:{self.port}"],
                stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=REPO,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while '"event":"appliance.ready"' not in self._log_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("appliance did not start:\n" + "\n".join(self._log_text().splitlines()[-40:]))
            time.sleep(0.05)

    def _log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self._log_text().splitlines():
            if f'"event":"{name}"' in line:
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def log_offset(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def events_since(self, offset: int, name: str) -> list[dict[str, Any]]:
        out = []
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            for raw in f:
                if f'"event":"{name}"'.encode() in raw:
                    with contextlib.suppress(ValueError):
                        out.append(json.loads(raw))
        return out


def remove_labelled(label: str, value: str) -> int:
    """Remove every container carrying label=value; returns how many there were."""
    with contextlib.suppress(RuntimeError):
        ids = podman("ps", "-a", "-q", "--filter", f"label={label}={value}").split()
        if ids:
            podman("rm", "-f", "-t", "0", *ids)
        return len(ids)
    return 0


def _podman_service_pids(data_dir: Path) -> list[int]:
    """PIDs of `podman system service` processes serving this data dir's socket (exact match)."""
    url = f"unix://{data_dir}/podman/podman.sock".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"system" in argv and b"service" in argv and url in argv:
            pids.append(int(entry.name))
    return pids


@contextlib.contextmanager
def running_appliance(extra_env: dict[str, str] | None = None) -> Iterator[BenchAppliance]:
    """A fresh appliance on a short temporary data dir (with these extra environment
    variables); everything it started is gone after."""
    data_dir = Path(tempfile.mkdtemp(prefix="sbx-", dir="/tmp"))
    app = BenchAppliance(data_dir=data_dir, extra_env=dict(extra_env or {}))
    try:
        app.start()
        yield app
    finally:
        instance = None
        with contextlib.suppress(OSError):
            instance = app.instance_id
        # Its worker processes, to end by pid should any outlive it.
        workers = []
        if app.process is not None and app.process.poll() is None:
            workers = [(p, procs.start_time(p)) for p in procs.same_program(app.process.pid)[1:]]
        if app.process is not None and app.process.poll() is None:
            try:
                app.stop(timeout=20)
            except subprocess.TimeoutExpired:
                app.kill()
        if instance:
            remove_labelled(LABEL_INSTANCE, instance)
            # Its Podman network and nftables tables outlive it while sandboxes lived.
            app.remove_network()
        for pid, started in workers:
            if started is not None and procs.start_time(pid) == started:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        # A service left behind (the appliance was killed) is ended by its pid.
        for pid in _podman_service_pids(data_dir):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        shutil.rmtree(data_dir, ignore_errors=True)
