"""The proxy rig: one upstream in a sandbox, reached directly, through nginx and through the gateway.

One sandbox runs `bench/upstream.py` on port 8000. The same requests can then go

    direct         http://<container-ip>:8000/            (the baseline: no proxy)
    nginx http     http://8000-<id>.sbx.localhost:<n>/    (nginx, keep-alive upstream)
    nginx https    https://...:<n'>/                      (same certificate as the gateway)
    gateway http   http://8000-<id>.sbx.localhost:<port>/
    gateway https  https://8000-<id>.sbx.localhost:<port>/

Everything it starts (the sandbox, nginx) is gone when the `with` block ends.
"""

from __future__ import annotations

import contextlib
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench import client, procs
from bench.client import Connection, Target
from bench.env import DOMAIN, BenchAppliance, podman
from bench.nginx import MISSING, Nginx, nginx_path
from tests.e2e.appliance import free_port

UPSTREAM_PORT = 8000
UPSTREAM_SOURCE = Path(__file__).with_name("upstream.py")


@dataclass
class Rig:
    app: BenchAppliance
    sandbox_id: str
    label: str  # the upstream's host name on the gateway and nginx: 8000-<id>.sbx.localhost
    targets: list[Target]
    nginx: Nginx | None = None
    notes: list[str] = field(default_factory=list)

    def target(self, name: str) -> Target | None:
        return next((t for t in self.targets if t.name == name), None)

    def proxy_pids(self, name: str) -> list[int]:
        """The processes doing a target's proxying (for CPU accounting)."""
        if name.startswith("gateway") and self.app.process is not None:
            return procs.same_program(self.app.process.pid)
        if name.startswith("nginx") and self.nginx is not None:
            return self.nginx.pids
        return []


def container_ip(sandbox_id: str) -> str:
    ip = podman("inspect", "--format", "{{.NetworkSettings.IPAddress}}", f"scalebox-{sandbox_id}").strip()
    if not ip:
        raise RuntimeError(f"sandbox {sandbox_id} has no container IP")
    return ip


def wait_answering(target: Target, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with Connection(target, timeout=2) as conn:
                conn.get("/")
            return
        except (OSError, client.HttpError) as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{target.name} did not answer within {timeout} s: {exc}") from None
            time.sleep(0.05)


def rotated(items: list[Target], i: int) -> list[Target]:
    """items starting at position i: each round visits the targets in another order."""
    k = i % len(items)
    return items[k:] + items[:k]


@contextlib.contextmanager
def upstream_rig(app: BenchAppliance, *, log: Callable[[str], None] = print) -> Iterator[Rig]:
    ca_ctx = ssl.create_default_context(cafile=str(app.ca))
    with app.client(timeout=60) as api:
        resp = api.post(f"{app.api_url}/sandboxes", json={"timeout": 3600, "cpu_count": 2, "memory_mb": 1024})
        if resp.status_code != 201:
            raise RuntimeError(f"create answered {resp.status_code}: {resp.text[:300]}")
        sandbox_id = str(resp.json()["data"]["sandbox_id"])
        nginx: Nginx | None = None
        try:
            ip = container_ip(sandbox_id)
            podman(
                "exec", "-d", f"scalebox-{sandbox_id}", "python3", "-c", UPSTREAM_SOURCE.read_text(), str(UPSTREAM_PORT)
            )
            direct = Target("direct", ip, UPSTREAM_PORT, f"{ip}:{UPSTREAM_PORT}")
            wait_answering(direct)
            label = f"{UPSTREAM_PORT}-{sandbox_id}.{DOMAIN}"
            targets = [direct]
            notes = []
            if nginx_path() is None:
                log(MISSING)
                notes.append(MISSING + " (nginx columns skipped)")
            else:
                nginx = Nginx(
                    upstream=f"{ip}:{UPSTREAM_PORT}",
                    plain_port=free_port(),
                    tls_port=free_port(),
                    cert=app.data_dir / "tls" / "server.pem",
                    key=app.data_dir / "tls" / "server-key.pem",
                )
                nginx.start()
                targets += [
                    Target("nginx http", "127.0.0.1", nginx.plain_port, f"{label}:{nginx.plain_port}"),
                    Target("nginx https", "127.0.0.1", nginx.tls_port, f"{label}:{nginx.tls_port}", ca_ctx),
                ]
            targets += [
                Target("gateway http", "127.0.0.1", app.port, f"{label}:{app.port}"),
                Target("gateway https", "127.0.0.1", app.port, f"{label}:{app.port}", ca_ctx),
            ]
            for t in targets:
                wait_answering(t)
            yield Rig(app=app, sandbox_id=sandbox_id, label=label, targets=targets, nginx=nginx, notes=notes)
        finally:
            if nginx is not None:
                nginx.stop()
            api.delete(f"{app.api_url}/sandboxes/{sandbox_id}")
