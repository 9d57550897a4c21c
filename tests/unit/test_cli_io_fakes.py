"""Fakes shared by the in-sandbox command tests: an agent and an API on httpx.MockTransport.

(Named test_cli_io_* so it sits with its tests; it holds no tests itself.)
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from cli.sandboxio.envelope import FLAG_END_STREAM, EnvelopeDecoder, encode

TOKEN = "tok-unit"
KEY = "sk-unit-test-key-0123456789"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def frames(*messages: dict[str, Any], error: dict[str, str] | None = None) -> bytes:
    body = b"".join(encode(json.dumps(m).encode()) for m in messages)
    end = {"error": error} if error else {}
    return body + encode(json.dumps(end).encode(), FLAG_END_STREAM)


def dribble(data: bytes, size: int = 3) -> Iterator[bytes]:
    """The body in small pieces: envelopes and lines split anywhere, as a network may."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def parse_multipart(request: httpx.Request) -> tuple[str, bytes]:
    boundary = request.headers["content-type"].split("boundary=", 1)[1]
    body = request.read()
    head, _, rest = body.partition(b"\r\n\r\n")
    assert rest.endswith(f"\r\n--{boundary}--\r\n".encode())
    filename = re.search(rb'filename="([^"]*)"', head)
    assert filename is not None
    return filename.group(1).decode(), rest[: -len(f"\r\n--{boundary}--\r\n")]


@dataclass
class FakeAgent:
    """Just enough of a sandbox's agent: Process Start/SendSignal/SendInput/Update, ListDir, files."""

    files: dict[str, bytes] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)  # what Start streams
    end_error: dict[str, str] | None = None
    unreachable: bool = False
    requests: list[httpx.Request] = field(default_factory=list)
    calls: list[tuple[str, Any]] = field(default_factory=list)  # (procedure, request JSON)
    entries: list[dict[str, Any]] = field(default_factory=list)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.unreachable:
            raise httpx.ConnectError("[Errno -2] Name or service not known", request=request)
        self.requests.append(request)
        if request.url.path == "/health":
            return httpx.Response(204)
        if request.headers.get("x-access-token") != TOKEN:
            return httpx.Response(401, json={"code": "unauthenticated", "message": "invalid access token"})
        path = request.url.path
        if path.startswith("/download/"):
            name = path.removeprefix("/download/")
            if name not in self.files:
                message = f"path not found: open {name}: no such file or directory"
                return httpx.Response(404, json={"code": "not_found", "message": message})
            data = self.files[name]
            return httpx.Response(200, headers={"content-length": str(len(data))}, content=dribble(data, 7))
        if path == "/upload":
            filename, data = parse_multipart(request)
            target = request.url.params["path"]
            self.files[target] = data
            self.calls.append(("upload", {"path": target, "filename": filename}))
            return httpx.Response(200, json={"name": filename, "type": "file", "path": target})
        procedure = path.lstrip("/")
        if request.headers["content-type"] == "application/connect+json":
            decoder = EnvelopeDecoder()
            decoder.feed(request.read())
            frame = decoder.next()
            assert frame is not None and decoder.pending == 0
            self.calls.append((procedure, json.loads(frame.payload)))
            body = frames(*self.events, error=self.end_error)
            return httpx.Response(200, headers={"content-type": "application/connect+json"}, content=dribble(body))
        assert request.headers["content-type"] == "application/json"
        message = json.loads(request.read())
        self.calls.append((procedure, message))
        if procedure == "sandboxagent.Filesystem/ListDir":
            if message["path"] == "/missing":
                return httpx.Response(404, json={"code": "not_found", "message": "path not found: stat /missing"})
            return httpx.Response(200, json={"entries": self.entries})
        if procedure == "sandboxagent.Process/SendSignal" and message["process"].get("pid") == 404:
            return httpx.Response(404, json={"code": "not_found", "message": "process with pid 404 not found"})
        return httpx.Response(200, json={})


def sse(*events: tuple[str, dict[str, Any]]) -> bytes:
    return b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events)


@dataclass
class FakeApi:
    """The appliance's /v1 API for one sandbox: GET the sandbox, exec stream, files, DELETE exec."""

    sandbox_id: str = "sbx-unit"
    state: str = "running"
    files: dict[str, bytes] = field(default_factory=dict)
    exec_events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    requests: list[httpx.Request] = field(default_factory=list)
    on_exec: Callable[[dict[str, Any]], list[tuple[str, dict[str, Any]]]] | None = None

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)

    def sandbox(self) -> dict[str, Any]:
        return {
            "sandbox_id": self.sandbox_id,
            "status": self.state,
            "state": self.state,
            "sandbox_domain": f"{self.sandbox_id}.sbx.localhost:8443",
            "envd_access_token": TOKEN,
        }

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.headers.get("x-api-key") != KEY:
            return httpx.Response(401, json={"success": False, "error": "unauthorized", "message": "bad key"})
        base = f"/v1/sandboxes/{self.sandbox_id}"
        path, method = request.url.path, request.method
        if path == base and method == "GET":
            return httpx.Response(200, json={"success": True, "data": self.sandbox()})
        if path == base + "/exec/stream":
            body = json.loads(request.read())
            events = self.on_exec(body) if self.on_exec else self.exec_events
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=dribble(sse(*events)))
        if path == base + "/exec" and method == "DELETE":
            return httpx.Response(200, json={"success": True, "data": {}})
        if path == base + "/files":
            target = request.url.params["path"]
            if method == "PUT":
                self.files[target] = request.read()
                return httpx.Response(200, json={"success": True, "data": {"path": target}})
            if target not in self.files:
                return httpx.Response(
                    404,
                    json={"success": False, "error": "not_found", "code": "agent_not_found",
                          "message": f"path not found: open {target}: no such file or directory"},
                )  # fmt: skip
            return httpx.Response(200, content=self.files[target])
        return httpx.Response(404, json={"success": False, "error": "not_found", "message": f"no such endpoint {path}"})
