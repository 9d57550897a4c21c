"""The Connect layer against the official Python SDK's own clients, both codecs.

Two clients ship in scalebox-sdk 1.0.10: ``scalebox.csx_connect.client.Client``
(httpcore) and the generated ``api_pb2_connect`` clients on connect-python
(urllib3, and aiohttp for the async SDK), which are what the SDK's sandbox
classes call. The handlers use stand-in messages wire-compatible with the
SDK's ``api_pb2`` classes.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import aiohttp
import httpcore
import pytest
import urllib3
from connectrpc.client_protocol import ConnectProtocol
from connectrpc.client_sync import ConnectClient
from connectrpc.errors import ConnectError as SdkConnectError
from connectrpc.errors import ConnectErrorCode
from scalebox.csx_connect.client import Client, Code, ConnectException
from scalebox.generated import api_pb2, api_pb2_connect
from scalebox.generated.rpc import authentication_header

from tests.unit.agent_helpers import COLLECT, STREAM, UNARY, Probe, ServerThread, build_app

TOKEN = "sdk-token"
HEADERS = {"X-Access-Token": TOKEN, **authentication_header("root")}
CODECS = pytest.mark.parametrize("use_json", [False, True], ids=["proto", "json"])


@pytest.fixture
def server() -> Iterator[ServerThread]:
    with ServerThread(lambda: build_app(Probe(), token=TOKEN, max_message=64 * 1024)) as running:
        yield running


def csx(server: ServerThread, path: str, response_type: Any, *, use_json: bool, headers: Any = None) -> Client:
    return Client(
        pool=httpcore.ConnectionPool(),
        url=server.url(path),
        response_type=response_type,
        json=use_json,
        headers=HEADERS if headers is None else headers,
    )


def protocol(use_json: bool) -> ConnectProtocol:
    return ConnectProtocol.CONNECT_JSON if use_json else ConnectProtocol.CONNECT_PROTOBUF


# -- scalebox.csx_connect.client.Client over httpcore -------------------------


@CODECS
def test_csx_unary(server: ServerThread, use_json: bool) -> None:
    client = csx(server, UNARY, api_pb2.CreateWatcherResponse, use_json=use_json)
    reply = client.call_unary(api_pb2.CreateWatcherRequest(path="/tmp", recursive=True), request_timeout=5)
    assert reply.watcher_id == "root|/tmp|True"
    with pytest.raises(ConnectException) as caught:
        client.call_unary(api_pb2.CreateWatcherRequest(path="missing"))
    assert (caught.value.status, caught.value.message) == (Code.not_found, "/missing: no such file or directory")


@CODECS
def test_csx_server_stream(server: ServerThread, use_json: bool) -> None:
    client = csx(server, STREAM, api_pb2.ExecuteResponse, use_json=use_json)
    replies = list(client.call_server_stream(api_pb2.ExecuteRequest(code="3"), timeout=5))
    assert [r.stdout.content for r in replies] == ["line 0", "line 1", "line 2"]
    with pytest.raises(ConnectException) as caught:
        list(client.call_server_stream(api_pb2.ExecuteRequest(code="1", language="fail")))
    assert caught.value.status == Code.failed_precondition


@CODECS
def test_csx_errors(server: ServerThread, use_json: bool) -> None:
    stream = csx(server, STREAM, api_pb2.ExecuteResponse, use_json=use_json, headers={})
    with pytest.raises(ConnectException) as caught:
        list(stream.call_server_stream(api_pb2.ExecuteRequest(code="1")))
    assert caught.value.status == Code.unauthenticated
    unary = csx(server, UNARY, api_pb2.CreateWatcherResponse, use_json=use_json, headers={})
    with pytest.raises(ConnectException) as caught:
        unary.call_unary(api_pb2.CreateWatcherRequest(path="x"))
    assert caught.value.status == Code.unauthenticated
    missing = csx(server, "/sandboxagent.Filesystem/Nope", api_pb2.CreateWatcherResponse, use_json=use_json)
    with pytest.raises(ConnectException) as caught:
        missing.call_unary(api_pb2.CreateWatcherRequest())
    assert caught.value.status == Code.unimplemented
    slow = csx(server, STREAM, api_pb2.ExecuteResponse, use_json=use_json)
    with pytest.raises(ConnectException) as caught:
        list(slow.call_server_stream(api_pb2.ExecuteRequest(code="1", language="hang"), timeout=1))
    assert caught.value.status == Code.deadline_exceeded
    big = csx(server, UNARY, api_pb2.CreateWatcherResponse, use_json=use_json)
    with pytest.raises(ConnectException) as caught:
        big.call_unary(api_pb2.CreateWatcherRequest(path="x" * 100_000))
    assert caught.value.status == Code.resource_exhausted


# -- the generated clients on connect-python (urllib3) ------------------------


@CODECS
def test_generated_unary(server: ServerThread, use_json: bool) -> None:
    client = api_pb2_connect.FilesystemClient(
        server.url(), http_client=urllib3.PoolManager(), protocol=protocol(use_json)
    )
    reply = client.create_watcher(api_pb2.CreateWatcherRequest(path="/w"), HEADERS, timeout_seconds=5)
    assert reply.watcher_id == "root|/w|False"
    with pytest.raises(SdkConnectError) as caught:
        client.create_watcher(api_pb2.CreateWatcherRequest(path="missing"), HEADERS)
    assert caught.value.code == ConnectErrorCode.NOT_FOUND
    assert "no such file or directory" in str(caught.value)  # what Filesystem.exists() looks for
    with pytest.raises(SdkConnectError) as caught:
        client.create_watcher(api_pb2.CreateWatcherRequest(path="x"), {"X-Access-Token": "wrong"})
    assert caught.value.code == ConnectErrorCode.UNAUTHENTICATED


@CODECS
def test_generated_server_stream(server: ServerThread, use_json: bool) -> None:
    client = api_pb2_connect.ExecutionServiceClient(
        server.url(), http_client=urllib3.PoolManager(), protocol=protocol(use_json)
    )
    replies = list(client.execute(api_pb2.ExecuteRequest(code="4"), HEADERS))
    assert [r.stdout.content for r in replies] == [f"line {i}" for i in range(4)]
    with pytest.raises(SdkConnectError) as caught:
        list(client.execute(api_pb2.ExecuteRequest(code="2", language="fail"), HEADERS))
    assert caught.value.code == ConnectErrorCode.FAILED_PRECONDITION
    with pytest.raises(SdkConnectError) as caught:
        list(client.execute(api_pb2.ExecuteRequest(code="1"), {}))
    assert caught.value.code == ConnectErrorCode.UNAUTHENTICATED


@CODECS
def test_generated_client_stream(server: ServerThread, use_json: bool) -> None:
    client = ConnectClient(urllib3.PoolManager(), protocol(use_json))
    requests = (api_pb2.CreateWatcherRequest(path=p) for p in ["a", "b", "c"])
    output = client.call_client_streaming(server.url(COLLECT), requests, api_pb2.CreateWatcherResponse, HEADERS)
    assert output.error() is None
    assert output.message().watcher_id == "a,b,c"  # type: ignore[union-attr]
    huge = iter([api_pb2.CreateWatcherRequest(path="x" * 100_000)])
    output = client.call_client_streaming(server.url(COLLECT), huge, api_pb2.CreateWatcherResponse, HEADERS)
    assert output.error() is not None
    assert output.error().code == ConnectErrorCode.RESOURCE_EXHAUSTED  # type: ignore[union-attr]


@CODECS
def test_sync_client_sees_a_message_before_the_stream_pauses(server: ServerThread, use_json: bool) -> None:
    """urllib3's read(8192) waits for a full block: the agent pads each message to one."""
    pool = urllib3.PoolManager()
    client = ConnectClient(pool, protocol(use_json))
    got: list[Any] = []

    def first_message() -> None:
        stream = client.call_server_streaming(
            server.url(STREAM), api_pb2.ExecuteRequest(code="2", language="hang"), api_pb2.ExecuteResponse, HEADERS
        )
        got.extend([next(stream), next(stream)])

    worker = threading.Thread(target=first_message, daemon=True)
    worker.start()
    worker.join(5)
    assert [m.stdout.content for m in got] == ["line 0", "line 1"]
    pool.clear()  # hang up: the handler is cancelled


@CODECS
def test_padded_streams_end_cleanly(server: ServerThread, use_json: bool) -> None:
    client = ConnectClient(urllib3.PoolManager(), protocol(use_json))
    for count in range(4):
        stream = client.call_server_streaming(
            server.url(STREAM), api_pb2.ExecuteRequest(code=str(count)), api_pb2.ExecuteResponse, HEADERS
        )
        assert len(list(stream)) == count
        assert stream.error() is None
        failing = client.call_server_streaming(
            server.url(STREAM),
            api_pb2.ExecuteRequest(code=str(count), language="fail"),
            api_pb2.ExecuteResponse,
            HEADERS,
        )
        assert len(list(failing)) == count
        assert failing.error().code == ConnectErrorCode.FAILED_PRECONDITION  # type: ignore[union-attr]


def test_generated_unknown_stream_is_unimplemented(server: ServerThread) -> None:
    client = ConnectClient(urllib3.PoolManager())
    stream = client.call_server_streaming(
        server.url("/sandboxagent.Process/Nope"), api_pb2.ExecuteRequest(), api_pb2.ExecuteResponse, HEADERS
    )
    assert list(stream) == []
    assert stream.error().code == ConnectErrorCode.UNIMPLEMENTED  # type: ignore[union-attr]


# -- the async generated clients (aiohttp), as the async SDK uses them -----------


@CODECS
def test_async_generated_clients(server: ServerThread, use_json: bool) -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            files = api_pb2_connect.AsyncFilesystemClient(server.url(), session, protocol(use_json))
            reply = await files.create_watcher(api_pb2.CreateWatcherRequest(path="/a"), HEADERS)
            assert reply.watcher_id == "root|/a|False"
            execution = api_pb2_connect.AsyncExecutionServiceClient(server.url(), session, protocol(use_json))
            replies = [r async for r in execution.execute(api_pb2.ExecuteRequest(code="2"), HEADERS)]
            assert [r.stdout.content for r in replies] == ["line 0", "line 1"]
            with pytest.raises(SdkConnectError) as caught:
                [r async for r in execution.execute(api_pb2.ExecuteRequest(language="crash"), HEADERS)]
            assert caught.value.code == ConnectErrorCode.INTERNAL

    asyncio.run(main())
