"""The Connect layer's pure parts: envelopes, codecs, errors, headers."""

from __future__ import annotations

import json

import pytest

from agent.connect import ConnectError, RpcContext, keepalive_interval
from agent.connect.codec import JSON, PROTO, for_content_type
from agent.connect.context import header_dict, parse_timeout
from agent.connect.envelope import EnvelopeReader, encode_envelope, end_stream
from agent.connect.errors import from_http_error
from agent.http import HttpError
from tests.unit.agent_helpers import CreateWatcherRequest


def test_envelope_reader_three_way() -> None:
    reader = EnvelopeReader(max_message=100)
    data = encode_envelope(b"one") + encode_envelope(b"") + encode_envelope(b"three")
    assert reader.next() is None
    for i in range(len(data)):  # fed byte by byte, the same messages come out
        reader.feed(data[i : i + 1])
        while (message := reader.next()) is not None:
            assert message in (b"one", b"", b"three")
    reader.finish()
    reader.feed(data)
    assert [reader.next(), reader.next(), reader.next(), reader.next()] == [b"one", b"", b"three", None]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\x01\x00\x00\x00\x01x", "unimplemented"),  # compressed
        (b"\x02\x00\x00\x00\x02{}", "invalid_argument"),  # end-of-stream from a client
        (b"\x80\x00\x00\x00\x00", "invalid_argument"),  # unknown flag
        (b"\x00\x00\x00\x00\x65", "resource_exhausted"),  # 101 bytes, refused from the header
    ],
)
def test_envelope_reader_refusals(data: bytes, code: str) -> None:
    reader = EnvelopeReader(max_message=100)
    reader.feed(data)
    with pytest.raises(ConnectError) as caught:
        reader.next()
    assert caught.value.code == code


def test_envelope_reader_truncated() -> None:
    reader = EnvelopeReader(max_message=100)
    reader.feed(encode_envelope(b"abc")[:-1])
    assert reader.next() is None
    with pytest.raises(ConnectError):
        reader.finish()


def test_end_stream() -> None:
    assert end_stream() == b"\x02\x00\x00\x00\x02{}"
    error = end_stream(ConnectError("not_found", "gone"))
    assert error[0] == 2
    assert json.loads(error[5:]) == {"error": {"code": "not_found", "message": "gone"}}


def test_content_types() -> None:
    assert for_content_type("application/proto") == (PROTO, False)
    assert for_content_type("Application/JSON; charset=utf-8") == (JSON, False)
    assert for_content_type("application/connect+proto") == (PROTO, True)
    assert for_content_type("application/connect+json") == (JSON, True)
    assert for_content_type("application/grpc") is None
    assert for_content_type(None) is None


def test_codecs_round_trip_and_refuse() -> None:
    message = CreateWatcherRequest(path="/p", recursive=True)
    assert PROTO.decode(CreateWatcherRequest, PROTO.encode(message)) == message
    assert JSON.encode(message) == b'{"path":"/p","recursive":true}'
    assert JSON.decode(CreateWatcherRequest, b' {"path":"/p","recursive":true} ') == message
    assert JSON.decode(CreateWatcherRequest, b"  ") == CreateWatcherRequest()
    for codec, data in [(PROTO, b"\x0a\x05"), (JSON, b"nope"), (JSON, b"3"), (JSON, b'{"path": 1}'), (JSON, b"\xff")]:
        with pytest.raises(ConnectError) as caught:
            codec.decode(CreateWatcherRequest, data)
        assert caught.value.code == "invalid_argument"


def test_errors() -> None:
    assert ConnectError("not_found", "x").http_status == 404
    assert ConnectError("unimplemented", "x").http_status == 501
    assert ConnectError("deadline_exceeded", "x").http_status == 504
    with pytest.raises(ValueError):
        ConnectError("nope", "x")
    assert from_http_error(HttpError(401, "unauthenticated", "m")).to_json() == {
        "code": "unauthenticated",
        "message": "m",
    }
    assert from_http_error(HttpError(413, "payload_too_large", "m")).code == "resource_exhausted"
    assert from_http_error(HttpError(400, "bad_request", "m")).code == "invalid_argument"
    assert from_http_error(HttpError(418, "teapot", "m")).code == "unknown"


@pytest.mark.parametrize(
    ("value", "seconds"), [(None, None), ("0", 0.0), ("1500", 1.5), (" 30000 ", 30.0), ("9999999999", 9999999.999)]
)
def test_parse_timeout(value: str | None, seconds: float | None) -> None:
    assert parse_timeout(value) == seconds


@pytest.mark.parametrize("value", ["", "-5", "1.5", "12345678901", "١٢"])
def test_parse_timeout_rejects(value: str) -> None:
    with pytest.raises(ConnectError) as caught:
        parse_timeout(value)
    assert caught.value.code == "invalid_argument"


@pytest.mark.parametrize(("value", "interval"), [(None, 50), ("10", 10), ("0", 1), ("3600", 50), ("x", 50)])
def test_keepalive_interval(value: str | None, interval: int) -> None:
    headers = {} if value is None else {"keepalive-ping-interval": value}
    assert keepalive_interval(RpcContext(procedure="/a.B/C", user_name="user", headers=headers)) == interval


def test_header_dict_joins_repeats() -> None:
    assert header_dict([("a", "1"), ("b", "2"), ("a", "3")]) == {"a": "1, 3", "b": "2"}


def test_context_user_is_resolved_lazily() -> None:
    ctx = RpcContext(procedure="/a.B/C", user_name="root", headers={})
    assert ctx.user.uid == 0
    assert ctx.time_remaining() is None
    unknown = RpcContext(procedure="/a.B/C", user_name="nobody-here", headers={})
    with pytest.raises(ConnectError) as caught:
        unknown.user  # noqa: B018 - the property is the thing tested
    assert (caught.value.code, "nobody-here" in caught.value.message) == ("invalid_argument", True)
