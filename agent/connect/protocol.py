"""Serving one Connect call over an HTTP request: unary, server-streaming, client-streaming.

Unary: the body is one message; the reply is 200 with the same codec's
Content-Type, or the error's own HTTP status with ``{"code", "message"}``.

Streams: the reply is always 200 with ``application/connect+<codec>``; each
message the handler yields is written as one envelope as soon as it is
yielded, and the stream ends with an end-of-stream envelope carrying ``{}``
or ``{"error": {...}}``. Request messages are decoded from the body as it
arrives (backpressure reaches the client), each capped in size.

The deadline from Connect-Timeout-Ms bounds reading the request and every
wait on the handler; when it passes the handler is cancelled and the call
fails with ``deadline_exceeded``. The HTTP layer cancels the whole call when
the client goes away.

Block alignment, for the Python SDK's synchronous client: it reads streams
through urllib3, whose ``read(8192)`` returns only once 8192 bytes or the
end of the body arrived, so a message followed by a pause (a command's start
event, then silence) would sit unseen in the client. For that client
(User-Agent ``python-urllib3/...``) every message is padded so that its
envelope ends on an 8192-byte boundary of the body: proto messages with an
unknown field (which every protobuf parser skips), JSON messages with
trailing whitespace. The end-of-stream envelope then starts a fresh read,
which also keeps clear of that client's habit of dropping an end-of-stream
payload that was not read together with its header.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import AsyncIterator, Awaitable
from typing import Any, NamedTuple, TypeVar

from agent import log
from agent.connect.codec import Codec
from agent.connect.context import RpcContext
from agent.connect.envelope import HEADER, EnvelopeReader, encode_envelope, end_stream
from agent.connect.errors import ConnectError, from_http_error
from agent.http.message import HttpError, Request, Response, json_response

BLOCK = 8192  # what the Python SDK's synchronous stream reader waits to fill
BLOCKING_CLIENT = "python-urllib3/"  # its User-Agent
PAD_FIELD = (1 << 29) - 1  # the highest field number: no message of ours uses it

UNARY = "unary"
SERVER_STREAM = "server_stream"
CLIENT_STREAM = "client_stream"

T = TypeVar("T")


class Method(NamedTuple):
    procedure: str  # "/<package.Service>/<Method>"
    kind: str  # UNARY, SERVER_STREAM or CLIENT_STREAM
    request_cls: Any
    response_cls: Any
    handler: Any
    timeout: bool  # whether Connect-Timeout-Ms bounds the call

    @property
    def streaming(self) -> bool:
        return self.kind != UNARY


async def serve_unary(method: Method, request: Request, codec: Codec, ctx: RpcContext, max_message: int) -> Response:
    try:
        check_encoding(request.header("content-encoding"), "Content-Encoding")
        result = await _within(ctx, method, _call_unary(method, request, codec, ctx, max_message))
        body = codec.encode(result)
    except Exception as exc:
        return unary_error(to_connect_error(exc, method))
    return Response(200, headers=[("Content-Type", codec.unary_type)], body=body)


async def _call_unary(method: Method, request: Request, codec: Codec, ctx: RpcContext, max_message: int) -> Any:
    try:
        data = await request.read(max_message)
    except HttpError as exc:
        if exc.status == 413:
            raise ConnectError("resource_exhausted", f"request message is larger than {max_message} bytes") from None
        raise
    result = await method.handler(codec.decode(method.request_cls, data), ctx)
    _check_type(method, result)
    return result


async def stream_body(
    method: Method, request: Request, codec: Codec, ctx: RpcContext, max_message: int
) -> AsyncIterator[bytes]:
    """The body of a streaming reply: the handler's messages, then the end of the stream."""
    error: ConnectError | None = None
    messages = read_messages(request, codec, method.request_cls, max_message)
    align = needs_alignment(request)
    sent = 0

    def frame(reply: Any) -> bytes:
        nonlocal sent
        payload = codec.encode(reply)
        if align:
            payload = pad_to_block(codec, payload, sent)
        sent += HEADER.size + len(payload)
        return encode_envelope(payload)

    try:
        check_encoding(request.header("connect-content-encoding"), "Connect-Content-Encoding")
        if method.kind == SERVER_STREAM:
            first = await _within(ctx, method, _only_message(messages))
            replies = method.handler(first, ctx)
            try:
                while True:
                    try:
                        reply = await _within(ctx, method, replies.__anext__())
                    except StopAsyncIteration:
                        break
                    _check_type(method, reply)
                    yield frame(reply)
            finally:
                await replies.aclose()
        else:
            reply = await _within(ctx, method, method.handler(messages, ctx))
            _check_type(method, reply)
            yield frame(reply)
    except Exception as exc:
        error = to_connect_error(exc, method)
    finally:
        await messages.aclose()  # type: ignore[attr-defined]
    yield end_stream(error)


def needs_alignment(request: Request) -> bool:
    return (request.header("user-agent") or "").startswith(BLOCKING_CLIENT)


def pad_to_block(codec: Codec, payload: bytes, sent: int) -> bytes:
    """``payload`` grown so that its envelope, sent after ``sent`` bytes, ends on a block boundary."""
    gap = -(sent + HEADER.size + len(payload)) % BLOCK
    if codec.name == "json":
        return payload + b" " * gap
    while True:
        filler = _proto_filler(gap)
        if filler is not None:
            return payload + filler
        gap += BLOCK  # too small for a field (or a size no field has): fill one more block


def _proto_filler(size: int) -> bytes | None:
    """An unknown length-delimited field of exactly ``size`` bytes, or None when none is."""
    for length_size in (1, 2, 3):
        length = size - len(_PAD_TAG) - length_size
        if length >= 0 and len(_varint(length)) == length_size:
            return _PAD_TAG + _varint(length) + b"\0" * length
    return None


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_PAD_TAG = _varint(PAD_FIELD << 3 | 2)


async def read_messages(request: Request, codec: Codec, cls: Any, max_message: int) -> AsyncIterator[Any]:
    """Request messages decoded from the body as it arrives."""
    reader = EnvelopeReader(max_message)
    body = request.body()
    try:
        async for chunk in body:
            reader.feed(chunk)
            while True:
                payload = reader.next()
                if payload is None:
                    break
                yield codec.decode(cls, payload)
        reader.finish()
    finally:
        await body.aclose()  # type: ignore[attr-defined]


async def _only_message(messages: AsyncIterator[Any]) -> Any:
    first = None
    async for message in messages:
        if first is not None:
            raise ConnectError("invalid_argument", "a server-streaming call takes exactly one request message")
        first = message
    if first is None:
        raise ConnectError("invalid_argument", "the request carried no message")
    return first


async def _within(ctx: RpcContext, method: Method, awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` before the call's deadline, or fail the call with deadline_exceeded."""
    remaining = ctx.time_remaining() if method.timeout else None
    if remaining is None:
        return await awaitable
    if remaining <= 0:
        close = getattr(awaitable, "close", None)
        if close is not None:
            close()  # never started: close it so it is not reported as never awaited
        raise _deadline_exceeded()
    try:
        return await asyncio.wait_for(awaitable, remaining)
    except asyncio.TimeoutError:
        remaining = ctx.time_remaining()
        if remaining is not None and remaining <= 0:
            raise _deadline_exceeded() from None
        raise  # the handler's own timeout, not the deadline


def _deadline_exceeded() -> ConnectError:
    return ConnectError("deadline_exceeded", "the call's deadline (Connect-Timeout-Ms) passed")


def check_encoding(value: str | None, header: str) -> None:
    if value is not None and value.strip().lower() not in ("", "identity"):
        raise ConnectError("unimplemented", f"{header} {value[:40]!r} is not supported: send identity")


def _check_type(method: Method, message: object) -> None:
    if not isinstance(message, method.response_cls):
        raise TypeError(f"{method.procedure} produced a {type(message).__name__}, not a {method.response_cls.__name__}")


def to_connect_error(exc: Exception, method: Method) -> ConnectError:
    """The one place where whatever a call raised becomes what the client is told."""
    if isinstance(exc, ConnectError):
        return exc
    if isinstance(exc, HttpError):
        return from_http_error(exc)
    log.event(
        "rpc_error",
        procedure=method.procedure,
        error=repr(exc),
        traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    )
    return ConnectError("internal", f"internal error ({type(exc).__name__})")


def unary_error(error: ConnectError, status: int | None = None) -> Response:
    return json_response(status or error.http_status, error.to_json())


def stream_error(codec: Codec, error: ConnectError) -> Response:
    """A stream that fails before it starts: still HTTP 200, the error in-band."""
    return Response(200, headers=[("Content-Type", codec.stream_type)], body=end_stream(error))
