"""A client for a sandbox's agent, for the routes that proxy it through the API.

It speaks what the official SDKs speak (Connect with the JSON codec, the
`/download` and `/upload` endpoints) over one short-lived HTTP/1.1 connection per
call, with h11 on Trio. Envelope framing comes from the agent's own module: one
owner per format.

Errors::

    AgentError(code, message)     the agent answered with a Connect error
     +-- AgentUnreachable         no connection, or it broke mid-call ("unavailable")
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import h11
import trio

from agent.connect.envelope import FLAG_END_STREAM, HEADER, encode_envelope

MAX_MESSAGE = 16 * 1024 * 1024
PROCESS = "sandboxagent.Process"
_CHUNK = 64 * 1024


class AgentError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class AgentUnreachable(AgentError):
    def __init__(self, message: str) -> None:
        super().__init__("unavailable", message)


@dataclass(frozen=True, kw_only=True)
class AgentEndpoint:
    ip: str
    token: str
    port: int = 8888
    connect_timeout: float = 5.0


def _auth_headers(ep: AgentEndpoint, user: str) -> list[tuple[str, str]]:
    basic = base64.b64encode(f"{user}:".encode()).decode()
    return [("X-Access-Token", ep.token), ("Authorization", f"Basic {basic}"), ("Host", "agent")]


class _Call:
    """One request/response exchange on its own connection."""

    def __init__(self, ep: AgentEndpoint) -> None:
        self.ep = ep
        self.conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)
        self.stream: trio.SocketStream | None = None

    async def __aenter__(self) -> _Call:
        try:
            with trio.fail_after(self.ep.connect_timeout):
                self.stream = await trio.open_tcp_stream(self.ep.ip, self.ep.port)
        except (OSError, trio.TooSlowError) as exc:
            raise AgentUnreachable(f"the sandbox agent is not answering ({exc or 'timeout'})") from None
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.stream is not None:
            await trio.aclose_forcefully(self.stream)

    async def send(self, event: h11.Event) -> None:
        assert self.stream is not None
        data = self.conn.send(event)
        try:
            if data:
                await self.stream.send_all(data)
        except (trio.BrokenResourceError, OSError) as exc:
            raise AgentUnreachable(f"the connection to the agent broke ({exc})") from None

    async def next_event(self) -> Any:
        assert self.stream is not None
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise AgentUnreachable(f"the agent sent invalid HTTP ({exc})") from None
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await self.stream.receive_some(_CHUNK)
            except (trio.BrokenResourceError, OSError) as exc:
                raise AgentUnreachable(f"the connection to the agent broke ({exc})") from None
            self.conn.receive_data(data)

    async def response(self) -> h11.Response:
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Response):
                return event
            if isinstance(event, h11.ConnectionClosed):
                raise AgentUnreachable("the agent closed the connection without answering")

    async def body(self) -> AsyncIterator[bytes]:
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return

    async def read_body(self, limit: int = MAX_MESSAGE) -> bytes:
        out = bytearray()
        async for chunk in self.body():
            out += chunk
            if len(out) > limit:
                raise AgentError("resource_exhausted", f"the agent's answer is larger than {limit} bytes")
        return bytes(out)


def _error_from_body(status: int, body: bytes) -> AgentError:
    try:
        data = json.loads(body)
        return AgentError(str(data.get("code") or "unknown"), str(data.get("message") or f"HTTP {status}"))
    except (ValueError, AttributeError):
        return AgentError("unknown", f"the agent answered HTTP {status}")


async def unary(ep: AgentEndpoint, method: str, request: dict[str, Any], *, user: str) -> dict[str, Any]:
    """`method` is `Service/Method`, e.g. `sandboxagent.Process/List`."""
    payload = json.dumps(request).encode()
    async with _Call(ep) as call:
        headers = [
            *_auth_headers(ep, user),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(payload))),
        ]
        await call.send(h11.Request(method="POST", target=f"/{method}", headers=headers))
        await call.send(h11.Data(data=payload))
        await call.send(h11.EndOfMessage())
        response = await call.response()
        body = await call.read_body()
    if response.status_code != 200:
        raise _error_from_body(response.status_code, body)
    result: dict[str, Any] = json.loads(body or b"{}")
    return result


async def server_stream(
    ep: AgentEndpoint, method: str, request: dict[str, Any], *, user: str
) -> AsyncIterator[dict[str, Any]]:
    """Yield each message of a server stream; raise AgentError if it ends with one."""
    envelope = encode_envelope(json.dumps(request).encode())
    async with _Call(ep) as call:
        headers = [
            *_auth_headers(ep, user),
            ("Content-Type", "application/connect+json"),
            ("Content-Length", str(len(envelope))),
        ]
        await call.send(h11.Request(method="POST", target=f"/{method}", headers=headers))
        await call.send(h11.Data(data=envelope))
        await call.send(h11.EndOfMessage())
        response = await call.response()
        if response.status_code != 200:
            raise _error_from_body(response.status_code, await call.read_body())
        buffer = bytearray()
        async for chunk in call.body():
            buffer += chunk
            while len(buffer) >= HEADER.size:
                flags, length = HEADER.unpack_from(buffer)
                if length > MAX_MESSAGE:
                    raise AgentError("resource_exhausted", f"a message of {length} bytes is over the limit")
                if len(buffer) < HEADER.size + length:
                    break
                payload = bytes(buffer[HEADER.size : HEADER.size + length])
                del buffer[: HEADER.size + length]
                message = json.loads(payload or b"{}")
                if flags & FLAG_END_STREAM:
                    error = message.get("error")
                    if error:
                        raise AgentError(str(error.get("code", "unknown")), str(error.get("message", "")))
                    return
                yield message
        raise AgentUnreachable("the agent's stream ended without an end-of-stream message")


@dataclass
class Download:
    """An open download: its headers now, its body as it streams."""

    status: int
    headers: dict[str, str]
    chunks: AsyncIterator[bytes]


@asynccontextmanager
async def open_download(ep: AgentEndpoint, path: str, *, user: str) -> AsyncIterator[Download]:
    """Open a file download; its body streams from `chunks` while the context is open.

    A missing file and other refusals raise AgentError on entry.
    """
    async with _Call(ep) as call:
        target = "/download/" + quote(path.lstrip("/"), safe="/")
        await call.send(h11.Request(method="GET", target=target, headers=_auth_headers(ep, user)))
        await call.send(h11.EndOfMessage())
        response = await call.response()
        if response.status_code != 200:
            raise _error_from_body(response.status_code, await call.read_body())
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in response.headers}
        yield Download(status=response.status_code, headers=headers, chunks=call.body())


async def upload(
    ep: AgentEndpoint, path: str, chunks: AsyncIterator[bytes], *, user: str, filename: str = "upload"
) -> Any:
    """Stream `chunks` to the agent's multipart `/upload` as the file `path`; return its JSON answer."""
    boundary = "scalebox-" + secrets.token_hex(16)
    safe_name = filename.replace('"', "").replace("\r", "").replace("\n", "") or "upload"
    preamble = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{safe_name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    epilogue = f"\r\n--{boundary}--\r\n".encode()
    async with _Call(ep) as call:
        headers = [
            *_auth_headers(ep, user),
            ("Content-Type", f"multipart/form-data; boundary={boundary}"),
            ("Transfer-Encoding", "chunked"),
        ]
        await call.send(h11.Request(method="POST", target=f"/upload?path={quote(path, safe='/')}", headers=headers))
        await call.send(h11.Data(data=preamble))
        async for chunk in chunks:
            if chunk:
                await call.send(h11.Data(data=chunk))
        await call.send(h11.Data(data=epilogue))
        await call.send(h11.EndOfMessage())
        response = await call.response()
        body = await call.read_body()
    if response.status_code != 200:
        raise _error_from_body(response.status_code, body)
    return json.loads(body or b"null")


async def kill_process(ep: AgentEndpoint, pid: int, *, user: str) -> None:
    """SIGKILL a process in the sandbox, best effort.

    Shielded, so it also runs while the caller is being cancelled (a client that
    hung up); the inner deadline still bounds it. A process that ended meanwhile
    is no error.
    """
    request = {"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"}
    with trio.CancelScope(shield=True), trio.move_on_after(5), contextlib.suppress(AgentError):
        await unary(ep, f"{PROCESS}/SendSignal", request, user=user)
