"""The Connect layer on loopback, driven with raw HTTP requests built here."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from tests.unit.agent_helpers import (
    COLLECT,
    STREAM,
    UNARY,
    UNTIMED,
    CreateWatcherRequest,
    CreateWatcherResponse,
    ExecuteRequest,
    ExecuteResponse,
    Output,
    Probe,
    build_app,
    end_of,
    envelope,
    exchange,
    parse_envelopes,
    read_chunk,
    read_head,
    serve,
)

TOKEN = "secret-token"


def post(path: str, body: bytes, content_type: str, *headers: str, chunked: bool = False) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: agent", f"Content-Type: {content_type}", *headers]
    if chunked:
        head.append("Transfer-Encoding: chunked")
        framed = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in _pieces(body)) + b"0\r\n\r\n"
        return ("\r\n".join(head) + "\r\n\r\n").encode() + framed
    head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _pieces(body: bytes, size: int = 7) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)] or []


def call(data: bytes, probe: Probe | None = None, **options: Any) -> tuple[int, dict[str, str], bytes]:
    async def scenario(port: int) -> Any:
        [response] = await exchange(port, data)
        return response

    return serve(build_app(probe or Probe(), **options), scenario)


def test_unary_proto_and_json() -> None:
    status, headers, body = call(
        post(UNARY, CreateWatcherRequest(path="/tmp", recursive=True).encode(), "application/proto")
    )
    assert (status, headers["content-type"]) == (200, "application/proto")
    assert CreateWatcherResponse.decode(body).watcher_id == "user|/tmp|True"
    status, headers, body = call(post(UNARY, b'{"path": "/x"}', "application/json; charset=utf-8"))
    assert (status, headers["content-type"], json.loads(body)) == (
        200,
        "application/json",
        {"watcherId": "user|/x|False"},
    )
    status, _, body = call(post(UNARY, b"", "application/json"))  # an empty body is the empty message
    assert (status, json.loads(body)) == (200, {"watcherId": "user||False"})


def test_unary_errors() -> None:
    status, headers, body = call(post(UNARY, b'{"path": "missing"}', "application/json"))
    assert (status, headers["content-type"]) == (404, "application/json")
    assert json.loads(body) == {"code": "not_found", "message": "/missing: no such file or directory"}
    status, _, body = call(post(UNARY, b'{"path": "boom"}', "application/json"))
    assert (status, json.loads(body)["code"]) == (500, "internal")
    status, _, body = call(post(UNARY, b'{"path": "wrong-type"}', "application/json"))
    assert (status, json.loads(body)["code"]) == (500, "internal")


def test_malformed_messages_are_invalid_argument() -> None:
    for data, content_type in [
        (b"\x0a\x05ab", "application/proto"),  # a string field cut short
        (b"{not json", "application/json"),
        (b"[1, 2]", "application/json"),
        (b'{"path": 5}', "application/json"),
    ]:
        status, _, body = call(post(UNARY, data, content_type))
        assert (status, json.loads(body)["code"]) == (400, "invalid_argument"), data


def test_unknown_procedure_is_unimplemented() -> None:
    status, _, body = call(post("/sandboxagent.Nope/Nothing", b"", "application/proto"))
    assert (status, json.loads(body)["code"]) == (404, "unimplemented")
    # A streaming client gets it in-band: it checks the Content-Type before the status.
    status, headers, body = call(post("/sandboxagent.Nope/Nothing", envelope(b""), "application/connect+proto"))
    assert (status, headers["content-type"]) == (200, "application/connect+proto")
    assert end_of(body)["error"]["code"] == "unimplemented"


def test_wrong_content_type_is_415() -> None:
    for path, content_type in [
        (UNARY, "text/plain"),
        (UNARY, "application/connect+proto"),
        (STREAM, "application/proto"),
        (UNARY, None),
    ]:
        headers = [] if content_type is None else [f"Content-Type: {content_type}"]
        data = ("\r\n".join([f"POST {path} HTTP/1.1", "Host: a", "Content-Length: 0", *headers]) + "\r\n\r\n").encode()
        status, response_headers, body = call(data)
        assert status == 415, (path, content_type)
        assert "application/" in json.loads(body)["message"]
        assert "accept-post" in response_headers


def test_get_is_405() -> None:
    status, headers, _ = call(b"GET " + UNARY.encode() + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (status, headers["allow"]) == (405, "POST")


def test_server_stream_both_codecs_and_chunked_request() -> None:
    request = ExecuteRequest(code="3")
    status, headers, body = call(post(STREAM, envelope(request.encode()), "application/connect+proto", chunked=True))
    assert (status, headers["content-type"], headers["transfer-encoding"]) == (
        200,
        "application/connect+proto",
        "chunked",
    )
    frames = parse_envelopes(body)
    assert [ExecuteResponse.decode(p).stdout for _, p in frames[:-1]] == [Output(content=f"line {i}") for i in range(3)]
    assert frames[-1] == (2, b"{}")
    status, headers, body = call(post(STREAM, envelope(b'{"code": "2"}'), "application/connect+json"))
    assert headers["content-type"] == "application/connect+json"
    assert [json.loads(p) for _, p in parse_envelopes(body)] == [
        {"stdout": {"content": "line 0"}},
        {"stdout": {"content": "line 1"}},
        {},
    ]


def test_stream_errors_are_in_band() -> None:
    status, _, body = call(
        post(STREAM, envelope(ExecuteRequest(code="1", language="fail").encode()), "application/connect+proto")
    )
    frames = parse_envelopes(body)
    assert status == 200
    assert len(frames) == 2
    assert end_of(body) == {"error": {"code": "failed_precondition", "message": "the stream failed on purpose"}}
    status, _, body = call(
        post(STREAM, envelope(ExecuteRequest(language="crash").encode()), "application/connect+proto")
    )
    assert (status, end_of(body)["error"]["code"]) == (200, "internal")
    for bad in [b"", envelope(b"\x0a\x09x"), envelope(b"") + envelope(b""), envelope(b"")[:3], envelope(b"{}", 2)]:
        status, _, body = call(post(STREAM, bad, "application/connect+proto"))
        assert (status, end_of(body)["error"]["code"]) == (200, "invalid_argument"), bad


def test_compressed_envelopes_and_encodings_are_refused() -> None:
    status, _, body = call(post(STREAM, envelope(b"\x1f\x8b", 1), "application/connect+proto"))
    assert (status, end_of(body)["error"]["code"]) == (200, "unimplemented")
    assert "compress" in end_of(body)["error"]["message"]
    status, _, body = call(post(STREAM, envelope(b""), "application/connect+proto", "Connect-Content-Encoding: gzip"))
    assert end_of(body)["error"]["code"] == "unimplemented"
    status, _, body = call(post(UNARY, b"", "application/proto", "Content-Encoding: gzip"))
    assert (status, json.loads(body)["code"]) == (501, "unimplemented")
    status, _, _ = call(post(UNARY, b"", "application/proto", "Content-Encoding: identity"))
    assert status == 200


def test_client_stream_decodes_as_the_body_arrives() -> None:
    messages = b"".join(envelope(CreateWatcherRequest(path=p).encode()) for p in ["a", "bb", "ccc"])
    status, headers, body = call(post(COLLECT, messages, "application/connect+proto", chunked=True))
    frames = parse_envelopes(body)
    assert (status, headers["content-type"]) == (200, "application/connect+proto")
    assert CreateWatcherResponse.decode(frames[0][1]).watcher_id == "a,bb,ccc"
    assert frames[1] == (2, b"{}")
    json_messages = envelope(b'{"path":"x"}') + envelope(b'{"path":"y"}')
    _, _, body = call(post(COLLECT, json_messages, "application/connect+json"))
    assert json.loads(parse_envelopes(body)[0][1]) == {"watcherId": "x,y"}

    async def scenario(port: int) -> None:
        # The handler gets the first message while the client is still sending.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = post(COLLECT, b"", "application/connect+proto", chunked=True)[: -len(b"0\r\n\r\n")]
        first = envelope(CreateWatcherRequest(path="first").encode())
        writer.write(head + b"%x\r\n%s\r\n" % (len(first), first))
        for _ in range(200):
            if probe.received:
                break
            await asyncio.sleep(0.01)
        assert probe.received == [CreateWatcherRequest(path="first")]
        second = envelope(CreateWatcherRequest(path="stop").encode())
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(second), second))
        status, _ = await read_head(reader)
        frames = parse_envelopes(await read_chunk(reader) or b"")
        assert status == 200
        assert CreateWatcherResponse.decode(frames[0][1]).watcher_id == "first,stop"
        writer.close()

    probe = Probe()
    serve(build_app(probe), scenario)


def test_oversized_messages_are_resource_exhausted() -> None:
    status, _, body = call(post(UNARY, b"x" * 2000, "application/proto"), max_message=1000)
    assert (status, json.loads(body)["code"]) == (429, "resource_exhausted")
    status, _, body = call(post(UNARY, b"\x0a\x03abc" * 400, "application/proto", chunked=True), max_message=1000)
    assert (status, json.loads(body)["code"]) == (429, "resource_exhausted")

    async def scenario(port: int) -> None:
        # The header alone refuses a huge message: nothing near 1 GiB is sent or buffered.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        huge = bytes([0]) + (1 << 30).to_bytes(4, "big") + b"\x0a\x01"
        writer.write(post(COLLECT, huge, "application/connect+proto", chunked=True)[: -len(b"0\r\n\r\n")])
        status, _ = await read_head(reader)
        frames = parse_envelopes(await read_chunk(reader) or b"")
        assert status == 200
        assert json.loads(frames[-1][1])["error"]["code"] == "resource_exhausted"
        writer.close()

    serve(build_app(Probe(), max_message=1000), scenario)


def test_deadlines() -> None:
    status, _, body = call(post(UNARY, b'{"path": "slow"}', "application/json", "Connect-Timeout-Ms: 100"))
    assert (status, json.loads(body)["code"]) == (504, "deadline_exceeded")
    status, _, body = call(
        post(
            STREAM,
            envelope(b'{"code": "1", "language": "hang"}'),
            "application/connect+json",
            "Connect-Timeout-Ms: 100",
        )
    )
    frames = parse_envelopes(body)
    assert (status, json.loads(frames[0][1]), end_of(body)["error"]["code"]) == (
        200,
        {"stdout": {"content": "line 0"}},
        "deadline_exceeded",
    )
    status, _, body = call(post(UNARY, b"{}", "application/json", "Connect-Timeout-Ms: soon"))
    assert (status, json.loads(body)["code"]) == (400, "invalid_argument")
    status, _, body = call(post(UNARY, b"{}", "application/json", "Connect-Timeout-Ms: 5000"))
    assert status == 200
    # A procedure registered with timeout=False outlives the header's deadline.
    _, _, body = call(post(UNTIMED, envelope(b"{}"), "application/connect+json", "Connect-Timeout-Ms: 50"))
    assert json.loads(parse_envelopes(body)[0][1]) == {"stdout": {"content": "after the deadline"}}
    assert end_of(body) == {}


def test_stream_messages_are_written_as_they_are_yielded() -> None:
    async def scenario(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post(STREAM, envelope(b'{"code": "1", "language": "slow"}'), "application/connect+json"))
        loop = asyncio.get_running_loop()
        started = loop.time()
        await read_head(reader)
        first = await read_chunk(reader)
        assert loop.time() - started < 0.25  # before the handler's 0.3 s pause
        assert json.loads(parse_envelopes(first or b"")[0][1]) == {"stdout": {"content": "line 0"}}
        second = await read_chunk(reader)
        assert json.loads(parse_envelopes(second or b"")[0][1]) == {"stderr": {"content": "late"}}
        writer.close()

    serve(build_app(Probe()), scenario)


def test_client_disconnect_cancels_the_handler() -> None:
    probe = Probe()

    async def scenario(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post(STREAM, envelope(b'{"code": "1", "language": "hang"}'), "application/connect+json"))
        await read_head(reader)
        assert await read_chunk(reader)
        writer.close()
        for _ in range(300):
            if probe.cancelled.is_set():
                break
            await asyncio.sleep(0.01)
        assert probe.cancelled.is_set()
        assert probe.closed_seen.is_set()  # ctx.closed was set before the cancellation
        assert probe.contexts[-1].closed.is_set()

    serve(build_app(probe), scenario)


def test_token_and_user_reach_the_handler() -> None:
    request = post(UNARY, b'{"path": "p"}', "application/json")
    status, _, body = call(request, token=TOKEN)
    assert (status, json.loads(body)) == (
        401,
        {"code": "unauthenticated", "message": "missing access token (X-Access-Token header)"},
    )
    status, _, body = call(post(UNARY, b"{}", "application/json", "X-Access-Token: wrong"), token=TOKEN)
    assert (status, json.loads(body)["code"]) == (401, "unauthenticated")
    status, _, body = call(post(STREAM, envelope(b"{}"), "application/connect+json"), token=TOKEN)
    assert (status, end_of(body)["error"]["code"]) == (200, "unauthenticated")
    basic = base64.b64encode(b"alice:").decode()
    for header, user in [
        (f"Authorization: Basic {basic}", "alice"),
        ("Authorization: Bearer root", "root"),
        ("X-No: 1", "user"),
    ]:
        status, _, body = call(
            post(UNARY, b'{"path": "p"}', "application/json", f"X-Access-Token: {TOKEN}", header), token=TOKEN
        )
        assert (status, json.loads(body)["watcherId"]) == (200, f"{user}|p|False")


def test_unknown_user_is_invalid_argument_when_used() -> None:
    status, _, body = call(post(UNARY, b'{"path": "whoami"}', "application/json", "Authorization: Bearer nosuchuser"))
    assert (status, json.loads(body)["code"]) == (400, "invalid_argument")
    assert "nosuchuser" in json.loads(body)["message"]
    status, _, body = call(post(UNARY, b'{"path": "whoami"}', "application/json", "Authorization: Bearer root"))
    assert json.loads(body) == {"watcherId": "root:0"}


def test_keepalive_interval_header() -> None:
    probe = Probe()
    call(post(UNARY, b"{}", "application/json", "Keepalive-Ping-Interval: 7", "X-Custom: a", "X-Custom: b"), probe)
    from agent.connect import keepalive_interval

    ctx = probe.contexts[-1]
    assert (keepalive_interval(ctx), ctx.headers["x-custom"], ctx.procedure) == (7, "a, b", UNARY)
