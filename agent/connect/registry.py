"""The RPC registry: procedures by path, and the HTTP handler that serves them.

    registry = Registry()

    @registry.unary("sandboxagent.Filesystem", "Stat", StatRequest, StatResponse)
    async def stat(request, ctx): ...                       # -> StatResponse

    @registry.server_stream("sandboxagent.Process", "Start", StartRequest, StartResponse)
    async def start(request, ctx): yield ...                # an async generator

    @registry.client_stream("sandboxagent.Process", "StreamInput", StreamInputRequest, StreamInputResponse)
    async def stream_input(requests, ctx): ...              # -> StreamInputResponse

    registry.mount(routes)   # POST /<package.Service>/<Method>, behind the token

Errors before a call starts follow its Content-Type: a streaming type gets
HTTP 200 with the error in the end-of-stream envelope (the Python SDK's
streaming client looks at the Content-Type before the status), a unary type
gets the error's HTTP status. An unknown procedure is ``unimplemented`` with
404, as Connect servers answer for a path they do not serve.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from agent.auth import DEFAULT_USER, Grant
from agent.connect.codec import JSON, PROTO, for_content_type
from agent.connect.context import RpcContext, header_dict, parse_timeout
from agent.connect.errors import ConnectError, from_http_error
from agent.connect.protocol import (
    CLIENT_STREAM,
    SERVER_STREAM,
    UNARY,
    Method,
    serve_unary,
    stream_body,
    stream_error,
    unary_error,
)
from agent.http.message import HttpError, Request, Response, error_response
from agent.http.routes import Routes

MAX_MESSAGE = 16 * 1024 * 1024
PROCEDURE_PATTERN = r"/[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+/[A-Za-z_][A-Za-z0-9_]*"

Decorator = Callable[[Any], Any]


class Registry:
    def __init__(self, *, max_message: int = MAX_MESSAGE) -> None:
        self.max_message = max_message
        self._methods: dict[str, Method] = {}

    def unary(
        self, service: str, method: str, request_cls: Any, response_cls: Any, *, timeout: bool = True
    ) -> Decorator:
        return self._register(UNARY, service, method, request_cls, response_cls, timeout)

    def server_stream(
        self, service: str, method: str, request_cls: Any, response_cls: Any, *, timeout: bool = True
    ) -> Decorator:
        """``timeout=False``: Connect-Timeout-Ms is ignored, ``ctx.deadline`` stays None (docs/agent-design.md)."""
        return self._register(SERVER_STREAM, service, method, request_cls, response_cls, timeout)

    def client_stream(
        self, service: str, method: str, request_cls: Any, response_cls: Any, *, timeout: bool = True
    ) -> Decorator:
        return self._register(CLIENT_STREAM, service, method, request_cls, response_cls, timeout)

    def _register(
        self, kind: str, service: str, name: str, request_cls: Any, response_cls: Any, timeout: bool
    ) -> Decorator:
        procedure = f"/{service}/{name}"

        def register(handler: Any) -> Any:
            if procedure in self._methods:
                raise ValueError(f"{procedure} is already registered")
            self._methods[procedure] = Method(procedure, kind, request_cls, response_cls, handler, timeout)
            return handler

        return register

    def method(self, procedure: str) -> Method | None:
        return self._methods.get(procedure)

    @property
    def procedures(self) -> list[str]:
        return sorted(self._methods)

    def mount(self, routes: Routes) -> None:
        routes.add_pattern("POST", PROCEDURE_PATTERN, self.handle, errors=self.render_http_error)

    async def handle(self, request: Request) -> Response:
        content_type = request.header("content-type")
        selected = for_content_type(content_type)
        method = self._methods.get(request.path)
        if method is None:
            return _early_error(request, ConnectError("unimplemented", f"{request.path[:200]} is not implemented"), 404)
        if selected is None or selected[1] != method.streaming:
            return _unsupported_media_type(method, content_type)
        codec = selected[0]
        try:
            timeout = parse_timeout(request.header("connect-timeout-ms"))
        except ConnectError as exc:
            return _early_error(request, exc)
        grant = request.auth
        ctx = RpcContext(
            procedure=method.procedure,
            user_name=grant.user if isinstance(grant, Grant) else DEFAULT_USER,
            headers=header_dict(request.headers),
            closed=request.disconnected,
        )
        if timeout is not None and method.timeout:
            ctx.deadline = asyncio.get_running_loop().time() + timeout
        if method.kind == UNARY:
            return await serve_unary(method, request, codec, ctx, self.max_message)
        return Response(
            200,
            headers=[("Content-Type", codec.stream_type)],
            body=stream_body(method, request, codec, ctx, self.max_message),
        )

    def render_http_error(self, request: Request, exc: HttpError) -> Response:
        """The auth guard's refusals, in Connect's form."""
        return _early_error(request, from_http_error(exc), exc.status)


def _early_error(request: Request, error: ConnectError, status: int | None = None) -> Response:
    selected = for_content_type(request.header("content-type"))
    if selected is not None and selected[1]:
        return stream_error(selected[0], error)
    return unary_error(error, status)


def _unsupported_media_type(method: Method, content_type: str | None) -> Response:
    codec_types = (PROTO.stream_type, JSON.stream_type) if method.streaming else (PROTO.unary_type, JSON.unary_type)
    accepted = ", ".join(codec_types)
    kind = method.kind.replace("_", "-")
    return error_response(
        415,
        "invalid_argument",
        f"Content-Type {(content_type or '')[:80]!r} is not accepted by the {kind} procedure "
        f"{method.procedure}: send {accepted}",
        headers=[("Accept-Post", accepted)],
    )
