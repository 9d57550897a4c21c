"""Wiring: read the config, take on PID 1 duties, serve HTTP, run the start command.

The HTTP routes are /health, then whatever the services add: the file
service (agent.fs) its RPCs and /download/, /upload; the process service
(agent.process) its RPCs; the code interpreter
(agent.interpreter) ExecutionService and ContextService. A service whose package cannot be imported is
logged and left out, so the agent still boots and answers /health.

Shutdown: SIGTERM or SIGINT (forwarded to the start command's group like the
other signals) stops the listeners, gives the group SHUTDOWN_GRACE seconds to
exit, SIGKILLs what is left, and exits 0. The start command's own exit does
not stop the agent.
"""

from __future__ import annotations

import asyncio
import os
import sys

from agent import log
from agent.auth import Authenticator
from agent.config import Config, ConfigError
from agent.connect import Registry
from agent.http import HttpServer, Routes
from agent.init import (
    SHUTDOWN_SIGNALS,
    Reaper,
    become_subreaper,
    install_signal_handlers,
    signal_name,
)
from agent.routes import Health, build_routes
from agent.startcmd import StartCommand

# Podman would wait 10 s before its own SIGKILL; a sandbox should stop in about 2.
SHUTDOWN_GRACE = 1.5


def main() -> int:
    try:
        config = Config.from_env(os.environ)
    except ConfigError as exc:
        log.event("config_error", message=str(exc))
        return 2
    log.event(
        "agent_start",
        pid=os.getpid(),
        python=sys.version.split()[0],
        port=config.port,
        reaps_orphans=become_subreaper(),
    )
    code = asyncio.run(_run(config))
    log.event("agent_exit", exit_code=code)
    return code


async def _run(config: Config) -> int:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_log_loop_error)
    reaper = Reaper()
    stopping = asyncio.Event()
    start: StartCommand | None = None

    def on_signal(signum: int) -> None:
        forwarded = start is not None and start.send_signal(signum)
        log.event("signal", signal=signal_name(signum), forwarded=forwarded)
        if signum in SHUTDOWN_SIGNALS:
            stopping.set()

    install_signal_handlers(loop, reaper, on_signal)

    authenticator = Authenticator(config.access_token)
    authenticator.log_mode()
    health = Health()
    routes = build_routes(health, authenticator)
    registry = Registry()
    _install_services(registry, routes, reaper)
    registry.mount(routes)
    server = HttpServer(routes)
    try:
        bound = await server.listen(config.port)
    except OSError as exc:
        log.event("listen_failed", port=config.port, error=str(exc))
        return 1
    for host, port in bound:
        log.event("listening", host=host, port=port)

    if config.start_cmd is not None:
        try:
            start = StartCommand.spawn(config.start_cmd, cwd=config.start_cwd, environ=os.environ, reaper=reaper)
        except OSError as exc:
            log.event("start_cmd_failed", cwd=config.start_cwd, error=str(exc))

    health.ready = True
    log.event("ready")
    await stopping.wait()

    health.ready = False
    await server.close()
    if start is not None:
        await start.stop(SHUTDOWN_GRACE)
    return 0


def _install_services(registry: Registry, routes: Routes, reaper: Reaper) -> None:
    try:
        from agent import fs
    except ImportError as exc:
        log.event("service_unavailable", service="fs", error=repr(exc))
    else:
        fs.install(registry, routes)
    try:
        from agent import process
    except ImportError as exc:
        log.event("service_unavailable", service="process", error=repr(exc))
    else:
        process.install(registry, reaper)
    try:
        from agent import interpreter
    except ImportError as exc:
        log.event("service_unavailable", service="interpreter", error=repr(exc))
    else:
        interpreter.install(registry, reaper)
    log.event("services", procedures=registry.procedures)


def _log_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
    log.event("loop_error", message=context.get("message"), error=repr(context.get("exception")))
