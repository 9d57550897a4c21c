"""Run a real `scalebox serve` as a child process for end-to-end tests.

Each appliance gets its own data dir and a port free on both loopback addresses
(*.localhost resolves to 127.0.0.1 and ::1). Teardown removes every container
carrying the appliance's instance label, so no test leaves a sandbox behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from controlplane.network.ruleset import network_name, render_removal, table_name
from controlplane.runtime.base import RuntimeFailure
from controlplane.runtime.disklimit import release_shm

REPO = Path(__file__).resolve().parents[2]
SCALEBOX = Path(sys.executable).with_name("scalebox")
DOMAIN = "sbx.localhost"


def free_port() -> int:
    """A port free on 127.0.0.1 and ::1 alike."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s4:
            s4.bind(("127.0.0.1", 0))
            port = s4.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s6:
                    s6.bind(("::1", port))
            except OSError:
                continue
            return int(port)
    raise RuntimeError("no port free on both loopback addresses")


@dataclass
class Appliance:
    data_dir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_lines: list[str] = field(default_factory=list)
    # More `scalebox serve` options, e.g. ("--warm-pool", "base=2").
    extra_args: tuple[str, ...] = ()

    # -- process control ------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        ready = threading.Event()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [str(SCALEBOX), "serve", "--data-dir", str(self.data_dir), "--domain", DOMAIN,
             "--listen", f"127.0.0.1:{self.port},[::1]:{self.port}", *self.extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=REPO,
        )  # fmt: skip
        stderr = self.process.stderr
        assert stderr is not None

        def pump() -> None:
            for raw in stderr:
                line = raw.decode("utf-8", "replace").rstrip()
                self.log_lines.append(line)
                if '"event":"appliance.ready"' in line:
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("appliance did not start:\n" + "\n".join(self.log_lines[-40:]))

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in list(self.log_lines):
            if f'"event":"{name}"' in line:
                out.append(json.loads(line))
        return out

    # -- what clients need ------------------------------------------------------------

    @property
    def api_key(self) -> str:
        return (self.data_dir / "admin-api-key").read_text().strip()

    @property
    def ca(self) -> Path:
        return self.data_dir / "tls" / "ca.pem"

    @property
    def instance_id(self) -> str:
        return (self.data_dir / "instance-id").read_text().strip()

    @property
    def api_url(self) -> str:
        return f"https://api.{DOMAIN}:{self.port}/v1"

    def url(self, host_label: str, path: str = "/") -> str:
        return f"https://{host_label}.{DOMAIN}:{self.port}{path}"

    def client(self, *, api_key: str | None = "admin", timeout: float = 60.0) -> httpx.Client:
        headers = {"X-API-KEY": self.api_key} if api_key == "admin" else ({"X-API-KEY": api_key} if api_key else {})
        return httpx.Client(verify=ssl.create_default_context(cafile=str(self.ca)), headers=headers, timeout=timeout)

    def sdk_env(self) -> dict[str, str]:
        return {
            "SBX_API_KEY": self.api_key,
            "SBX_DOMAIN": f"api.{DOMAIN}:{self.port}/v1",
            "SSL_CERT_FILE": str(self.ca),
        }

    # -- podman, for assertions and cleanup -------------------------------------------------

    def containers(self) -> list[dict[str, Any]]:
        """Containers carrying this appliance's instance label, from the podman CLI."""
        out = podman("ps", "-a", "--format", "json", "--filter", f"label=io.scalebox.instance={self.instance_id}")
        return list(json.loads(out or "[]"))

    def remove_containers(self) -> None:
        if not (self.data_dir / "instance-id").exists():
            return
        ids = [c["Id"] for c in self.containers()]
        if ids:
            remove_containers(*ids)

    def remove_network(self) -> None:
        """Its Podman network and nftables tables, which outlive a stop while sandboxes live
        (and a kill). Call after remove_containers."""
        if not (self.data_dir / "instance-id").exists():
            return
        # Not `rm -f`: that visits every container on the host, and waits on any one busy.
        with contextlib.suppress(RuntimeError):
            podman("network", "rm", network_name(self.instance_id))
        removal = render_removal(table_name(self.instance_id))
        subprocess.run(["nft", "-f", "-"], input=removal, text=True, capture_output=True, check=False)


def remove_containers(*names: str) -> None:
    """`podman rm -f`, as PodmanRuntime.remove does it: stop, let go of a /dev/shm that
    Podman 4.3 can leave mounted (user namespaces), then remove."""
    for attempt in (1, 2):
        with contextlib.suppress(RuntimeError, RuntimeFailure):
            podman("stop", "-t", "0", *names)
            for attrs in json.loads(podman("inspect", *names)):
                if attrs["State"]["Status"] in ("exited", "stopped"):
                    release_shm(attrs)
        try:
            podman("rm", "-f", "-t", "0", *names)
            return
        except RuntimeError:
            # The race can still leave the shm mount busy for a moment: let go and try once more.
            if attempt == 2:
                raise
            time.sleep(1)


def podman(*args: str) -> str:
    env = {**os.environ, "CONTAINERS_CONF": str(REPO / "podman" / "containers.conf")}
    result = subprocess.run(["podman", *args], capture_output=True, text=True, env=env, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def stop_and_clean(app: Appliance) -> None:
    """Stop the appliance (gracefully, else killed), then remove its containers and its Podman service."""
    if app.process is not None and app.process.poll() is None:
        try:
            app.stop(timeout=15)
        except subprocess.TimeoutExpired:
            app.kill()
    try:
        app.remove_containers()
    finally:
        app.remove_network()
        stop_podman_service(app.data_dir)


def stop_podman_service(data_dir: Path) -> None:
    """End a Podman API service an appliance left behind (a kill -9 leaves its child running)."""
    subprocess.run(["pkill", "-f", f"unix://{data_dir}/podman/podman.sock"], check=False)
