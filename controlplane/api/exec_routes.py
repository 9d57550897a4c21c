"""Routes that reach into a running sandbox through its agent: commands, files.

For users who stay on the API: everything here is also possible with the SDKs
talking to the sandbox domain directly; these routes proxy the same agent calls
behind API-key auth.

    POST   /v1/sandboxes/{id}/exec          run a command, answer stdout, stderr, exit code
    GET    /v1/sandboxes/{id}/exec/stream   the same as Server-Sent Events (POST with a JSON body too)
    GET    /v1/sandboxes/{id}/exec/active   processes running in the sandbox
    DELETE /v1/sandboxes/{id}/exec          signal a process (?pid= or ?tag=, &signal=)
    GET    /v1/sandboxes/{id}/files         download ?path=
    PUT    /v1/sandboxes/{id}/files         upload the body to ?path=
"""

from __future__ import annotations

import base64
import codecs
import json
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio

from controlplane.agentclient import (
    PROCESS,
    AgentEndpoint,
    AgentError,
    kill_process,
    open_download,
    server_stream,
    unary,
    upload,
)
from controlplane.api.envelope import success
from controlplane.api.exec_schemas import ExecRequest, parse_exec, parse_selector, parse_signal
from controlplane.api.wire import json_response, read_json_body
from controlplane.errors import (
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    Unavailable,
)
from controlplane.lifecycle.service import SandboxService
from controlplane.lifecycle.states import State
from controlplane.tokens import mint_access_token

# What one exec answer may carry of each stream; the rest is cut and flagged.
MAX_CAPTURE = 4 * 1024 * 1024

_AGENT_CODES: dict[str, type[ApiError]] = {
    "not_found": NotFound,
    "invalid_argument": BadRequest,
    "permission_denied": Forbidden,
    "already_exists": Conflict,
    "failed_precondition": Conflict,
}


def agent_error(exc: AgentError) -> ApiError:
    """One place where the agent's Connect errors become API errors."""
    kind = _AGENT_CODES.get(exc.code, Unavailable)
    prefix = "" if kind is not Unavailable else "the sandbox's agent failed: "
    return kind(prefix + exc.message, code=f"agent_{exc.code}")


class _Capture:
    """Decoded text of one output stream, capped."""

    def __init__(self) -> None:
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.parts: list[str] = []
        self.size = 0
        self.truncated = False

    def add(self, data: bytes) -> str:
        text = self.decoder.decode(data)
        if self.size + len(data) > MAX_CAPTURE:
            self.truncated = True
        else:
            self.parts.append(text)
            self.size += len(data)
        return text

    def text(self) -> str:
        return "".join(self.parts) + ("" if self.truncated else self.decoder.decode(b"", final=True))


def _output(event: dict[str, Any]) -> tuple[str, bytes] | None:
    data = event.get("data")
    if not data:
        return None
    for stream in ("stdout", "stderr", "pty"):
        if stream in data:
            return stream, base64.b64decode(data[stream])
    return None


def register(app: QuartTrio, *, service: SandboxService, secret: bytes) -> None:
    def endpoint(sandbox_id: str) -> AgentEndpoint:
        rec = service.get(sandbox_id)
        if rec.state is not State.RUNNING or not rec.ip:
            hint = "; resume it first" if rec.state is State.PAUSED else ""
            raise Conflict(f"sandbox {rec.id} is {rec.state.value}{hint}", code="sandbox_not_running")
        return AgentEndpoint(ip=rec.ip, token=mint_access_token(secret, rec.id))

    async def events(ep: AgentEndpoint, req: ExecRequest) -> AsyncIterator[dict[str, Any]]:
        start: dict[str, Any] = {"process": req.process_config()}
        if req.tag:
            start["tag"] = req.tag
        async for message in server_stream(ep, f"{PROCESS}/Start", start, user=req.user):
            event = message.get("event") or {}
            if "keepalive" not in event:
                yield event

    @app.post("/v1/sandboxes/<sandbox_id>/exec")
    async def exec_command(sandbox_id: str) -> Response:
        req = parse_exec(await read_json_body())
        ep = endpoint(sandbox_id)
        started = time.monotonic()
        out, err = _Capture(), _Capture()
        pid: int | None = None
        end: dict[str, Any] | None = None
        stream = events(ep, req)
        with trio.move_on_after(req.timeout) as deadline:
            async for event in stream:
                if "start" in event:
                    pid = int(event["start"].get("pid", 0))
                    if req.background:
                        break
                elif (chunk := _output(event)) is not None:
                    (err if chunk[0] == "stderr" else out).add(chunk[1])
                elif "end" in event:
                    end = event["end"]
        await stream.aclose()  # type: ignore[attr-defined]
        timed_out = deadline.cancelled_caught
        if timed_out and pid is not None:
            await kill_process(ep, pid, user=req.user)
        data = {
            "pid": pid,
            "background": req.background,
            "exit_code": None if end is None else int(end.get("exitCode", 0)),
            "status": None if end is None else end.get("status", ""),
            "error": None if end is None else end.get("error"),
            "stdout": out.text(),
            "stderr": err.text(),
            "truncated": out.truncated or err.truncated,
            "timed_out": timed_out,
            "duration_ms": round((time.monotonic() - started) * 1000, 1),
        }
        message = "command timed out and was killed" if timed_out else "command finished"
        if req.background:
            message = "command started in the background"
        return json_response(success(data, message))

    @app.route("/v1/sandboxes/<sandbox_id>/exec/stream", methods=["GET", "POST"])
    async def exec_stream(sandbox_id: str) -> Response:
        if request.method == "GET":
            query = request.args.to_dict()
            body: dict[str, Any] = {k: v for k, v in query.items() if k in ("command", "cmd", "cwd", "user", "tag")}
            if "args" in request.args:
                body["args"] = request.args.getlist("args")
            if "timeout" in query:
                raw = query["timeout"]
                # isascii: isdigit() also accepts "²", which int() refuses; the length keeps int() from
                # its 4300-digit ValueError. Anything else goes on as text, for parse_exec to refuse.
                body["timeout"] = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 18 else raw
        else:
            body = await read_json_body()
        req = parse_exec(body)
        ep = endpoint(sandbox_id)

        async def sse() -> AsyncIterator[bytes]:
            decoders = {
                name: codecs.getincrementaldecoder("utf-8")(errors="replace") for name in ("stdout", "stderr", "pty")
            }
            pid: int | None = None
            finished = False
            try:
                with trio.move_on_after(req.timeout) as deadline:
                    async for event in events(ep, req):
                        if "start" in event:
                            pid = int(event["start"].get("pid", 0))
                            yield _sse("start", {"pid": pid})
                        elif (chunk := _output(event)) is not None:
                            yield _sse(chunk[0], {"data": decoders[chunk[0]].decode(chunk[1])})
                        elif "end" in event:
                            end = event["end"]
                            finished = True
                            summary = {"exit_code": int(end.get("exitCode", 0)), "status": end.get("status", "")}
                            yield _sse("end", {**summary, "error": end.get("error")})
                if deadline.cancelled_caught:
                    yield _sse("error", {"message": f"timed out after {req.timeout} s; the command was killed"})
            except AgentError as exc:
                yield _sse("error", {"code": exc.code, "message": exc.message})
            finally:
                if not finished and pid is not None:
                    await kill_process(ep, pid, user=req.user)

        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return Response(sse(), headers=headers)

    @app.get("/v1/sandboxes/<sandbox_id>/exec/active")
    async def exec_active(sandbox_id: str) -> Response:
        ep = endpoint(sandbox_id)
        listed = await unary(ep, f"{PROCESS}/List", {}, user="root")
        processes = []
        for item in listed.get("processes", []):
            config = item.get("config") or {}
            processes.append({
                "pid": item.get("pid"),
                "tag": item.get("tag"),
                "cmd": config.get("cmd", ""),
                "args": config.get("args", []),
                "cwd": config.get("cwd"),
            })  # fmt: skip
        return json_response(success({"processes": processes}))

    @app.delete("/v1/sandboxes/<sandbox_id>/exec")
    async def exec_cancel(sandbox_id: str) -> Response:
        selector = parse_selector(request.args.to_dict())
        signal = parse_signal(request.args.get("signal"))
        ep = endpoint(sandbox_id)
        await unary(ep, f"{PROCESS}/SendSignal", {"process": selector, "signal": signal}, user="root")
        return json_response(success({"process": selector, "signal": signal.removeprefix("SIGNAL_")}, "signal sent"))

    def file_args() -> tuple[str, str]:
        path = request.args.get("path")
        if not path or "\x00" in path:
            raise BadRequest("the query parameter path is required", code="invalid_query")
        user = request.args.get("user") or "root"
        return path, user

    @app.get("/v1/sandboxes/<sandbox_id>/files")
    async def download_file(sandbox_id: str) -> Response:
        path, user = file_args()
        ep = endpoint(sandbox_id)
        stack = AsyncExitStack()
        try:
            dl = await stack.enter_async_context(open_download(ep, path, user=user))
        except BaseException:
            await stack.aclose()
            raise

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in dl.chunks:
                    yield chunk
            finally:
                with trio.CancelScope(shield=True):
                    await stack.aclose()

        headers = {
            k: v for k, v in dl.headers.items() if k in ("content-type", "content-length", "content-disposition")
        }
        response = Response(body(), headers=headers)
        if "content-length" in dl.headers:
            response.content_length = int(dl.headers["content-length"])
        return response

    @app.put("/v1/sandboxes/<sandbox_id>/files")
    async def upload_file(sandbox_id: str) -> Response:
        path, user = file_args()
        ep = endpoint(sandbox_id)

        async def chunks() -> AsyncIterator[bytes]:
            async for chunk in request.body:
                yield chunk

        answer = await upload(ep, path, chunks(), user=user, filename=path.rsplit("/", 1)[-1])
        return json_response(success(answer, "file written"))


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
