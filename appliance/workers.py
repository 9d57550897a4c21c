"""Gateway worker processes: more CPUs serving the one gateway port.

The gateway is CPU-bound Python, and one Trio thread uses one core. The
appliance process opens the listening sockets and starts `N - 1` workers
(`--gateway-processes N`) that inherit them: every process accepts on the same
sockets, and the kernel hands each new connection to one of them (an idle
process takes it first, so busy ones get fewer). A worker is only a gateway:
it reads routes from the database read-only (SQLite WAL lets it read while the
appliance writes; `PRAGMA data_version` tells its route cache when to start
over), checks tokens with the appliance's secret, and forwards the API host to
the appliance's unix socket. The control plane and the lifecycle stay in the
appliance process, which remains the only writer.

Lifecycle: the appliance restarts a worker that dies (after a pause), sends
SIGTERM on shutdown and waits for the workers to drain. A worker dies with the
appliance (PR_SET_PDEATHSIG): an appliance killed with -9 leaves no worker
holding its port.

    python -m appliance.workers '<settings as JSON>'
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import trio

from appliance import log
from appliance.router import make_router
from controlplane.store import RouteReader
from controlplane.tokens import load_or_create_secret
from gateway.access import SandboxView
from gateway.server import Gateway
from gateway.tls.context import server_context
from gateway.upstream import Pool, UnixAddress

RESTART_PAUSE = 1.0
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerSettings:
    index: int
    listen_fds: list[int]
    database: str
    secret_path: str
    api_socket: str
    domain: str
    tls_cert: str
    tls_key: str
    drain_timeout: float
    parent_pid: int

    def to_arg(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_arg(cls, text: str) -> WorkerSettings:
        return cls(**json.loads(text))


# --- in the appliance: start and supervise ----------------------------------------------


async def run_workers(settings: list[WorkerSettings], shutdown: trio.Event) -> None:
    """Keep one process per settings running until `shutdown`, then stop them (drained)."""
    async with trio.open_nursery() as nursery:
        for one in settings:
            nursery.start_soon(_supervise, one, shutdown)


async def _supervise(settings: WorkerSettings, shutdown: trio.Event) -> None:
    argv = [sys.executable, "-m", "appliance.workers", settings.to_arg()]
    while not shutdown.is_set():
        process = await trio.lowlevel.open_process(argv, pass_fds=settings.listen_fds, stdin=subprocess.DEVNULL)
        log.event("gateway.worker_started", worker=settings.index, pid=process.pid)
        async with trio.open_nursery() as nursery:

            async def stop_on_shutdown(proc: trio.Process = process) -> None:
                await shutdown.wait()
                proc.send_signal(signal.SIGTERM)
                with trio.move_on_after(settings.drain_timeout + 2) as waited:
                    await proc.wait()
                if waited.cancelled_caught:
                    proc.kill()

            nursery.start_soon(stop_on_shutdown)
            code = await process.wait()
            nursery.cancel_scope.cancel()
        if shutdown.is_set():
            await process.wait()
            log.event("gateway.worker_stopped", worker=settings.index, exit_code=code)
            return
        log.event("gateway.worker_died", worker=settings.index, exit_code=code)
        await trio.sleep(RESTART_PAUSE)


# --- in the worker ------------------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the appliance died before the line above took effect
        os._exit(1)


async def _serve(settings: WorkerSettings) -> None:
    reader = RouteReader(Path(settings.database))
    secret = load_or_create_secret(Path(settings.secret_path))

    def lookup(sandbox_id: str) -> SandboxView | None:
        view = reader.sandbox_view(sandbox_id)
        return None if view is None else SandboxView(state=view[0], ip=view[1])

    router = make_router(
        domain=settings.domain,
        secret=secret,
        api_address=UnixAddress(settings.api_socket),
        lookup=lookup,
        version=reader.version,
    )
    gateway = Gateway(
        router=router,
        ssl_context=server_context(Path(settings.tls_cert), Path(settings.tls_key)),
        pool=Pool(),
        worker=settings.index,
    )
    listeners = [
        trio.SocketListener(trio.socket.from_stdlib_socket(socket.socket(fileno=fd))) for fd in settings.listen_fds
    ]
    shutdown = trio.Event()

    async def watch_signals() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                shutdown.set()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_signals)
            log.event("gateway.worker_ready", worker=settings.index, pid=os.getpid())
            await gateway.serve(listeners, shutdown)  # returns once drained after SIGTERM
            nursery.cancel_scope.cancel()
    finally:
        reader.close()


def main(argv: list[str]) -> int:
    settings = WorkerSettings.from_arg(argv[1])
    _die_with_parent(settings.parent_pid)
    trio.run(_serve, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
