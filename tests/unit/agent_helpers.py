"""Shared by the agent's HTTP and Connect tests: stand-in messages, a server thread, raw HTTP.

The stand-in messages speak the same protobuf and proto3 JSON as the
SDK's ``api_pb2`` classes they are named after, so the official clients
can talk to handlers written with them; they do not depend on agent.proto.
"""

from __future__ import annotations

import asyncio
import base64
import glob
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from agent.auth import Authenticator
from agent.connect import Registry
from agent.http import HttpServer, Routes

# -- stand-in messages ------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


class Stub:
    """A proto3 message with string, bytes, bool, uint and message fields: (number, name, kind, class)."""

    FIELDS: ClassVar[tuple[tuple[int, str, str, Any], ...]] = ()

    def __init__(self, **values: Any) -> None:
        for _, name, kind, _cls in self.FIELDS:
            default = {"string": "", "bytes": b"", "bool": False, "uint": 0, "message": None}[kind]
            setattr(self, name, values.pop(name, default))
        if values:
            raise TypeError(f"unknown fields {sorted(values)}")

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and all(getattr(self, n) == getattr(other, n) for _, n, _, _ in self.FIELDS)

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for _, n, _, _ in self.FIELDS)
        return f"{type(self).__name__}({fields})"

    def encode(self) -> bytes:
        out = bytearray()
        for number, name, kind, _cls in self.FIELDS:
            value = getattr(self, name)
            if kind in ("string", "bytes", "message"):
                if kind == "message":
                    if value is None:
                        continue
                    payload = value.encode()
                else:
                    if not value:
                        continue
                    payload = value.encode() if kind == "string" else value
                out += _varint(number << 3 | 2) + _varint(len(payload)) + payload
            elif value:
                out += _varint(number << 3) + _varint(int(value))
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> Any:
        by_number = {number: (name, kind, sub) for number, name, kind, sub in cls.FIELDS}
        values: dict[str, Any] = {}
        pos = 0
        while pos < len(data):
            key, pos = _read_varint(data, pos)
            number, wire = key >> 3, key & 7
            if wire == 0:
                value, pos = _read_varint(data, pos)
            elif wire == 2:
                length, pos = _read_varint(data, pos)
                if pos + length > len(data):
                    raise ValueError("truncated field")
                value, pos = data[pos : pos + length], pos + length
            else:
                raise ValueError(f"unsupported wire type {wire}")
            if number not in by_number:
                continue
            name, kind, sub = by_number[number]
            if kind == "string":
                values[name] = bytes(value).decode()
            elif kind == "bytes":
                values[name] = bytes(value)
            elif kind == "message":
                values[name] = sub.decode(bytes(value))
            elif kind == "bool":
                values[name] = bool(value)
            else:
                values[name] = value
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for _, name, kind, _cls in self.FIELDS:
            value = getattr(self, name)
            if kind == "message":
                if value is not None:
                    out[_camel(name)] = value.to_json()
            elif value:
                out[_camel(name)] = base64.b64encode(value).decode() if kind == "bytes" else value
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Any:
        values: dict[str, Any] = {}
        for _, name, kind, sub in cls.FIELDS:
            for key in (_camel(name), name):
                if key in obj:
                    value = obj[key]
                    if kind == "message":
                        value = sub.from_json(value)
                    elif kind == "bytes":
                        value = base64.b64decode(value)
                    elif kind == "uint":
                        value = int(value)
                    elif kind == "string" and not isinstance(value, str):
                        raise ValueError(f"{key} must be a string")
                    values[name] = value
        return cls(**values)


class CreateWatcherRequest(Stub):
    FIELDS = ((1, "path", "string", None), (2, "recursive", "bool", None))


class CreateWatcherResponse(Stub):
    FIELDS = ((1, "watcher_id", "string", None),)


class Output(Stub):
    FIELDS = ((1, "content", "string", None),)


class ExecuteRequest(Stub):
    FIELDS = ((1, "context_id", "string", None), (2, "code", "string", None), (3, "language", "string", None))


class ExecuteResponse(Stub):
    FIELDS = ((1, "stdout", "message", Output), (2, "stderr", "message", Output))


# -- a registry of test procedures -------------------------------------------

UNARY = "/sandboxagent.Filesystem/CreateWatcher"
STREAM = "/sandboxagent.ExecutionService/Execute"
COLLECT = "/test.Collector/Collect"
UNTIMED = "/test.Collector/Untimed"


class Probe:
    """What the test handlers saw, for assertions from the test."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.closed_seen = threading.Event()
        self.contexts: list[Any] = []
        self.received: list[Any] = []


def build_registry(probe: Probe, **options: Any) -> Registry:
    from agent.connect import ConnectError, RpcContext

    registry = Registry(**options)

    @registry.unary("sandboxagent.Filesystem", "CreateWatcher", CreateWatcherRequest, CreateWatcherResponse)
    async def create_watcher(request: CreateWatcherRequest, ctx: RpcContext) -> Any:
        probe.contexts.append(ctx)
        if request.path == "boom":
            raise RuntimeError("handler bug")
        if request.path == "missing":
            raise ConnectError("not_found", "/missing: no such file or directory")
        if request.path == "slow":
            await asyncio.sleep(30)
        if request.path == "wrong-type":
            return Output(content="x")
        if request.path == "whoami":
            return CreateWatcherResponse(watcher_id=f"{ctx.user.name}:{ctx.user.uid}")
        return CreateWatcherResponse(watcher_id=f"{ctx.user_name}|{request.path}|{request.recursive}")

    @registry.server_stream("sandboxagent.ExecutionService", "Execute", ExecuteRequest, ExecuteResponse)
    async def execute(request: ExecuteRequest, ctx: RpcContext) -> Any:
        probe.contexts.append(ctx)
        count = int(request.code or "0")
        for i in range(count):
            yield ExecuteResponse(stdout=Output(content=f"line {i}"))
        if request.language == "fail":
            raise ConnectError("failed_precondition", "the stream failed on purpose")
        if request.language == "crash":
            raise KeyError("handler bug")
        if request.language in ("hang", "slow"):
            if request.language == "slow":
                await asyncio.sleep(0.3)
                yield ExecuteResponse(stderr=Output(content="late"))
                return
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                if ctx.closed.is_set():
                    probe.closed_seen.set()
                probe.cancelled.set()
                raise

    @registry.client_stream("test.Collector", "Collect", CreateWatcherRequest, CreateWatcherResponse)
    async def collect(requests: Any, ctx: RpcContext) -> Any:
        paths = []
        async for request in requests:
            probe.received.append(request)
            paths.append(request.path)
            if request.path == "stop":
                break
        return CreateWatcherResponse(watcher_id=",".join(paths))

    @registry.server_stream("test.Collector", "Untimed", ExecuteRequest, ExecuteResponse, timeout=False)
    async def untimed(request: ExecuteRequest, ctx: RpcContext) -> Any:
        assert ctx.deadline is None
        await asyncio.sleep(0.4)
        yield ExecuteResponse(stdout=Output(content="after the deadline"))

    return registry


def build_app(probe: Probe, *, token: str | None = None, **options: Any) -> Routes:
    routes = Routes(guard=Authenticator(token).check)
    build_registry(probe, **options).mount(routes)
    return routes


# -- a server on its own thread, for the synchronous SDK clients --------------


class ServerThread:
    def __init__(self, make_app: Callable[[], Routes], **server_options: Any) -> None:
        self._make_app = make_app
        self._options = server_options
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self.port = 0
        self.error: BaseException | None = None

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the server did not start")
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        try:
            server = HttpServer(self._make_app(), **self._options)
            [(_, self.port)] = await server.listen(0, host="127.0.0.1", ipv6_host=None)
        except BaseException as exc:
            self.error = exc
            self._ready.set()
            raise
        self._ready.set()
        await self._stop.wait()
        await server.close()


# -- raw HTTP over asyncio streams ---------------------------------------------


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def read_chunk(reader: asyncio.StreamReader) -> bytes | None:
    """One chunk of a chunked body; None after the last (trailers skipped)."""
    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
    if size == 0:
        while await reader.readuntil(b"\r\n") != b"\r\n":
            pass
        return None
    data = await reader.readexactly(size)
    await reader.readexactly(2)
    return data


async def read_response(reader: asyncio.StreamReader, *, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
    status, headers = await read_head(reader)
    if head_only or status in (204, 304):
        return status, headers, b""
    if headers.get("transfer-encoding") == "chunked":
        body = bytearray()
        while (chunk := await read_chunk(reader)) is not None:
            body += chunk
        return status, headers, bytes(body)
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"]))
    return status, headers, await reader.read()


async def exchange(port: int, data: bytes, *, responses: int = 1) -> list[tuple[int, dict[str, str], bytes]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return [await read_response(reader) for _ in range(responses)]
    finally:
        writer.close()


async def closed_by_peer(reader: asyncio.StreamReader, within: float = 3.0) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), within) == b""
    except ConnectionError:
        return True


def serve(app: Routes, scenario: Callable[[int], Awaitable[Any]], **server_options: Any) -> Any:
    """Run ``scenario(port)`` against an in-process server on 127.0.0.1."""

    async def main() -> Any:
        server = HttpServer(app, **server_options)
        [(_, port)] = await server.listen(0, host="127.0.0.1", ipv6_host=None)
        try:
            return await asyncio.wait_for(scenario(port), 15)
        finally:
            await server.close()

    return asyncio.run(main())


def envelope(payload: bytes, flags: int = 0) -> bytes:
    return bytes([flags]) + len(payload).to_bytes(4, "big") + payload


def parse_envelopes(body: bytes) -> list[tuple[int, bytes]]:
    frames = []
    while body:
        flags, length = body[0], int.from_bytes(body[1:5], "big")
        frames.append((flags, body[5 : 5 + length]))
        body = body[5 + length :]
    return frames


def end_of(body: bytes) -> Any:
    """The JSON of a stream's end-of-stream envelope (which must be its last)."""
    flags, payload = parse_envelopes(body)[-1]
    assert flags == 2
    return json.loads(payload)


def python39() -> str:
    """A real Python 3.9 to run the agent on: the oldest Python sandboxes may have.

    The machine image ships pyenv's 3.9 (pyenv's shims may name one that is not
    installed, hence the probe). Without it the 3.9 checks would prove nothing, so
    its absence fails them rather than skipping them.
    """
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9")))
    candidates += [path for path in [shutil.which("python3.9")] if path]
    for candidate in candidates:
        try:
            probe = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0 and probe.stdout.strip() == b"(3, 9)":
            return candidate
    raise AssertionError("no Python 3.9 found (expected under ~/.pyenv/versions)")
