"""A terminal in a sandbox over a WebSocket, through the API.

    GET /v1/sandboxes/{id}/terminal   (WebSocket; ?cols=&rows=&user=&cwd=)

The API key comes in X-API-KEY, or as `?api_key=` for browsers, which cannot set
headers on a WebSocket. Messages:

    server -> client   binary: terminal output
                       text:   {"type": "start", "pid": N}, {"type": "exit", "exit_code": N, "status": "..."}
    client -> server   binary: keystrokes
                       text:   {"type": "input", "data": "..."} or {"type": "resize", "cols": C, "rows": R}

The shell is a PTY process of the sandbox's agent (`bash -i -l`); it is killed
when the WebSocket closes.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
import uuid
from typing import Any

import trio
from quart import g, websocket
from quart_trio import QuartTrio

from appliance import log
from controlplane import apikeys
from controlplane.agentclient import PROCESS, AgentEndpoint, AgentError, kill_process, server_stream, unary
from controlplane.errors import ApiError, NotFound
from controlplane.lifecycle.service import SandboxService
from controlplane.lifecycle.states import State
from controlplane.store import Store
from controlplane.tokens import mint_access_token

_USER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


def _size(raw: str | None, default: int) -> int:
    if raw is None or not raw.isascii() or not raw.isdigit():
        return default
    # Past six digits it is over the cap anyway, and int() of thousands of digits raises.
    return max(1, min(int(raw), 1000)) if len(raw) <= 6 else 1000


def register(app: QuartTrio, *, service: SandboxService, store: Store, secret: bytes) -> None:
    @app.websocket("/v1/sandboxes/<sandbox_id>/terminal")
    async def terminal(sandbox_id: str) -> None:
        g.request_id = websocket.headers.get("X-Request-Id") or uuid.uuid4().hex[:16]
        started = time.monotonic()
        try:
            key = apikeys.authenticate(store, websocket.headers.get("X-API-KEY") or websocket.args.get("api_key"))
            rec = service.get(sandbox_id)
            if rec.owner_id != key.user_id:
                # Another user's sandbox is as if it did not exist (see app.authenticate).
                raise NotFound(f"sandbox {sandbox_id[:64]} does not exist", code="sandbox_not_found")
        except ApiError as exc:
            # Refuse the handshake with the status the error carries.
            await websocket.close(1008, exc.message[:120])
            log.event("api.terminal", request_id=g.request_id, sandbox_id=sandbox_id, refused=exc.message)
            return
        if rec.state is not State.RUNNING or not rec.ip:
            await websocket.close(1008, f"sandbox {rec.id} is {rec.state.value}")
            return
        user = websocket.args.get("user") or "root"
        if not set(user) <= _USER_CHARS:
            await websocket.close(1008, "invalid user name")
            return
        ep = AgentEndpoint(ip=rec.ip, token=mint_access_token(secret, rec.id))
        config: dict[str, Any] = {"cmd": "/bin/bash", "args": ["-i", "-l"], "envs": {"TERM": "xterm-256color"}}
        if websocket.args.get("cwd"):
            config["cwd"] = websocket.args["cwd"]
        size = {"cols": _size(websocket.args.get("cols"), 80), "rows": _size(websocket.args.get("rows"), 24)}
        start = {"process": config, "pty": {"size": size}}
        await websocket.accept()
        pid: int | None = None
        try:
            async with trio.open_nursery() as nursery:

                async def pump_output() -> None:
                    nonlocal pid
                    async for message in server_stream(ep, f"{PROCESS}/Start", start, user=user):
                        event = message.get("event") or {}
                        if "start" in event:
                            pid = int(event["start"].get("pid", 0))
                            await websocket.send(json.dumps({"type": "start", "pid": pid}))
                            nursery.start_soon(pump_input)
                        elif "data" in event and "pty" in event["data"]:
                            await websocket.send(base64.b64decode(event["data"]["pty"]))
                        elif "end" in event:
                            end = event["end"]
                            exit_info = {
                                "type": "exit",
                                "exit_code": end.get("exitCode", 0),
                                "status": end.get("status"),
                            }
                            await websocket.send(json.dumps(exit_info))
                            nursery.cancel_scope.cancel()

                async def pump_input() -> None:
                    while True:
                        data = await websocket.receive()
                        selector = {"pid": pid}
                        if isinstance(data, bytes):
                            keys = data
                        else:
                            try:
                                command = json.loads(data)
                            except ValueError:
                                continue
                            if command.get("type") == "resize":
                                new = {
                                    "cols": _size(str(command.get("cols")), 80),
                                    "rows": _size(str(command.get("rows")), 24),
                                }
                                await unary(
                                    ep, f"{PROCESS}/Update", {"process": selector, "pty": {"size": new}}, user=user
                                )
                                continue
                            if command.get("type") != "input" or not isinstance(command.get("data"), str):
                                continue
                            keys = command["data"].encode()
                        payload = {"process": selector, "input": {"pty": base64.b64encode(keys).decode()}}
                        await unary(ep, f"{PROCESS}/SendInput", payload, user=user)

                nursery.start_soon(pump_output)
        except* AgentError as group:
            first = group.exceptions[0]
            with contextlib.suppress(Exception):
                await websocket.send(
                    json.dumps({"type": "error", "code": getattr(first, "code", "unknown"), "message": str(first)})
                )
        finally:
            if pid is not None:
                await kill_process(ep, pid, user="root")
            log.event(
                "api.terminal",
                request_id=g.request_id,
                sandbox_id=sandbox_id,
                pid=pid,
                seconds=round(time.monotonic() - started, 1),
            )
