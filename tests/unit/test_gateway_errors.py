from __future__ import annotations

import json
import struct

import pytest

from gateway import errors


@pytest.mark.parametrize(
    ("method", "path", "ctype", "kind"),
    [
        (b"POST", b"/sandboxagent.Process/Start", b"application/connect+proto", "stream"),
        (b"POST", b"/sandboxagent.Process/Start", b"application/connect+json; charset=utf-8", "stream"),
        (b"POST", b"/sandboxagent.Filesystem/Stat", b"application/proto", "unary"),
        (b"POST", b"/sandboxagent.Filesystem/Stat", b"Application/JSON", "unary"),
        (b"GET", b"/sandboxagent.Filesystem/Stat", b"application/proto", None),
        (b"POST", b"/v1/sandboxes", b"application/json", None),  # the API, not an RPC
        (b"POST", b"/sandboxagent.Filesystem/Stat", b"text/plain", None),
        (b"POST", b"/upload", b"multipart/form-data; boundary=x", None),
    ],
)
def test_connect_kind(method: bytes, path: bytes, ctype: bytes, kind: str | None) -> None:
    assert errors.connect_kind(method, path, ctype) == kind


def test_stream_errors_are_in_band_end_of_stream_envelopes() -> None:
    status, ctype, body = errors.render_connect(
        401, "missing X-Access-Token", kind="stream", content_type="application/connect+proto"
    )
    assert (status, ctype) == (200, "application/connect+proto")
    flags, length = struct.unpack(">BI", body[:5])
    assert flags == 0x02 and length == len(body) - 5
    assert json.loads(body[5:]) == {"error": {"code": "unauthenticated", "message": "missing X-Access-Token"}}


@pytest.mark.parametrize(
    ("status", "code"),
    [(401, "unauthenticated"), (404, "not_found"), (409, "failed_precondition"), (502, "unavailable")],
)
def test_unary_errors_keep_the_status_and_carry_a_connect_code(status: int, code: str) -> None:
    out_status, ctype, body = errors.render_connect(status, "why", kind="unary", content_type="application/proto")
    assert (out_status, ctype) == (status, "application/json")
    assert json.loads(body) == {"code": code, "message": "why"}
