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
appliance: it checks every PARENT_CHECK seconds that its parent is still the
appliance, so an appliance killed with -9 leaves no worker holding its port.
(Not PR_SET_PDEATHSIG: that fires when the parent *thread* that forked ends,
and trio forks from a worker thread that exits after ten idle seconds: every
worker was killed ten seconds after it started.)

Certificate reload: SIGHUP to the appliance reloads its certificate and key
files and is passed on to every worker, which reloads them too (`reload_tls`);
new handshakes get the new certificate, open connections keep theirs. A worker
ignores SIGHUP from its first instruction (see `_BOOT`), so one passed on while
it is still starting cannot kill it; it reads the files when it starts anyway.

    python -c "$_BOOT" '<settings as JSON>'
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path

import trio

from appliance import log
from appliance.router import make_router
from controlplane.store import RouteReader
from controlplane.tokens import load_or_create_secret, mint_access_token
from gateway.server import Gateway
from gateway.tls.identity import load_server_tls
from gateway.traffic import ApiTrafficSink, flush, report_traffic
from gateway.upstream import Pool, UnixAddress
from gateway.wake import DEFAULT_WAKE_TIMEOUT, ApiWaker

RESTART_PAUSE = 1.0
PARENT_CHECK = 0.5  # seconds between checks that the appliance is still there
# A worker's first instruction: SIGHUP's default action is to terminate, and the
# appliance passes SIGHUP on to workers that may still be importing.
_BOOT = (
    "import signal, sys; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
    "from appliance.workers import main; sys.exit(main(sys.argv))"
)


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
    wake_timeout: float = DEFAULT_WAKE_TIMEOUT

    def to_arg(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_arg(cls, text: str) -> WorkerSettings:
        return cls(**json.loads(text))


# --- in every gateway process ---------------------------------------------------------------


def make_waker(*, api_socket: str, secret: bytes, timeout: float, worker: int) -> ApiWaker:
    """Wake on traffic through the API socket, with tokens minted here: no process needs an API key."""
    return ApiWaker(
        api=UnixAddress(api_socket),
        token_for=lambda sandbox_id: mint_access_token(secret, sandbox_id),
        timeout=timeout,
        worker=worker,
    )


def reload_tls(gateway: Gateway, cert: Path, key: Path) -> bool:
    """Load the certificate and key files again and present them to new connections.

    A pair that does not load is logged and the current one kept.
    """
    try:
        tls = load_server_tls(cert, key)
    except ValueError as exc:
        log.event("gateway.tls_reload_failed", worker=gateway.worker, error=str(exc))
        return False
    gateway.use_tls(tls)
    log.event("gateway.tls_reloaded", worker=gateway.worker, names=list(tls.names))
    return True


# --- in the appliance: start and supervise ----------------------------------------------


class WorkerGroup:
    """The worker processes running now, to pass signals on to."""

    def __init__(self) -> None:
        self._running: dict[int, trio.Process] = {}

    def started(self, index: int, process: trio.Process) -> None:
        self._running[index] = process

    def send_signal(self, signum: int) -> None:
        for process in list(self._running.values()):
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)


async def run_workers(settings: list[WorkerSettings], shutdown: trio.Event, group: WorkerGroup | None = None) -> None:
    """Keep one process per settings running until `shutdown`, then stop them (drained)."""
    group = group or WorkerGroup()
    async with trio.open_nursery() as nursery:
        for one in settings:
            nursery.start_soon(_supervise, one, shutdown, group)


async def _supervise(settings: WorkerSettings, shutdown: trio.Event, group: WorkerGroup) -> None:
    argv = [sys.executable, "-c", _BOOT, settings.to_arg()]
    while not shutdown.is_set():
        process = await trio.lowlevel.open_process(argv, pass_fds=settings.listen_fds, stdin=subprocess.DEVNULL)
        group.started(settings.index, process)
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


def _exit_if_orphaned(parent: int) -> None:
    if os.getppid() != parent:  # the appliance is gone: its port must not stay held
        os._exit(1)


async def _watch_parent(parent: int) -> None:
    while True:
        _exit_if_orphaned(parent)
        await trio.sleep(PARENT_CHECK)


async def _serve(settings: WorkerSettings) -> None:
    # Listening before the certificate is read: a SIGHUP for files written after
    # that read must not be lost (until now it was ignored, see _BOOT).
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        reader = RouteReader(Path(settings.database))
        try:
            await _serve_with(settings, reader, signals)
        finally:
            reader.close()


async def _serve_with(settings: WorkerSettings, reader: RouteReader, signals: AsyncIterator[int]) -> None:
    secret = load_or_create_secret(Path(settings.secret_path))

    router = make_router(
        domain=settings.domain,
        secret=secret,
        api_address=UnixAddress(settings.api_socket),
        record=reader.sandbox_view,
        version=reader.version,
    )
    cert, key = Path(settings.tls_cert), Path(settings.tls_key)
    waker = make_waker(
        api_socket=settings.api_socket, secret=secret, timeout=settings.wake_timeout, worker=settings.index
    )
    gateway = Gateway(
        router=router.http,
        streams=router.stream,
        tls=load_server_tls(cert, key),
        pool=Pool(),
        worker=settings.index,
        waker=waker,
    )
    listeners = [
        trio.SocketListener(trio.socket.from_stdlib_socket(socket.socket(fileno=fd))) for fd in settings.listen_fds
    ]
    shutdown = trio.Event()

    async def watch_signals() -> None:
        async for signum in signals:
            if signum == signal.SIGHUP:
                reload_tls(gateway, cert, key)
            else:
                shutdown.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_signals)
        nursery.start_soon(_watch_parent, settings.parent_pid)
        # Bytes per sandbox go to the appliance's meter over the API socket (gateway/traffic.py).
        sink = ApiTrafficSink(api=UnixAddress(settings.api_socket), secret=secret)
        nursery.start_soon(report_traffic, gateway.traffic, sink)
        log.event("gateway.worker_ready", worker=settings.index, pid=os.getpid())
        await gateway.serve(listeners, shutdown)  # returns once drained after SIGTERM
        with trio.move_on_after(2):
            await flush(gateway.traffic, sink)
        nursery.cancel_scope.cancel()


def main(argv: list[str]) -> int:
    settings = WorkerSettings.from_arg(argv[1])
    _exit_if_orphaned(settings.parent_pid)
    trio.run(_serve, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
