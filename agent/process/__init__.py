"""The Process service: start commands and terminals, stream their output, feed their input.

    events.py   output chunks and the end, and how an exit status is reported (pure)
    hub.py      fan-out of one process's events to its streams, with backpressure (pure)
    table.py    running and recently ended processes by pid and tag (pure)
    spawn.py    environment, working directory, user; pipes or a PTY; Popen
    running.py  a started process on the event loop: output, input, exit
    service.py  the sandboxagent.Process handlers

``install(registry, reaper)`` registers the handlers; the reaper is the
agent's (processes are reaped by it, never waited for here).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from agent.connect import Registry
    from agent.init import Reaper
    from agent.process.service import ProcessService

SERVICE = "sandboxagent.Process"


def install(registry: Registry, reaper: Reaper) -> ProcessService:
    # Imported here so that the pure modules (hub, table, events) load without the RPC layer.
    from agent.process.service import ProcessService
    from agent.proto import (
        ConnectRequest,
        ConnectResponse,
        ListRequest,
        ListResponse,
        SendInputRequest,
        SendInputResponse,
        SendSignalRequest,
        SendSignalResponse,
        StartRequest,
        StartResponse,
        StreamInputRequest,
        StreamInputResponse,
        UpdateRequest,
        UpdateResponse,
    )

    service = ProcessService(reaper)
    # A process outlives any deadline: the Python SDK sends its request timeout (30 s)
    # as Connect-Timeout-Ms on these streams, and means how long to wait for a byte.
    registry.server_stream(SERVICE, "Start", StartRequest, StartResponse, timeout=False)(service.start)
    registry.server_stream(SERVICE, "Connect", ConnectRequest, ConnectResponse, timeout=False)(service.connect)
    registry.unary(SERVICE, "List", ListRequest, ListResponse)(service.list)
    registry.unary(SERVICE, "SendInput", SendInputRequest, SendInputResponse)(service.send_input)
    registry.client_stream(SERVICE, "StreamInput", StreamInputRequest, StreamInputResponse)(service.stream_input)
    registry.unary(SERVICE, "SendSignal", SendSignalRequest, SendSignalResponse)(service.send_signal)
    registry.unary(SERVICE, "Update", UpdateRequest, UpdateResponse)(service.update)
    return service
