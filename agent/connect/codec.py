"""The two Connect codecs and the content types that select them.

    application/proto          unary, protobuf binary    (the Python SDK)
    application/json           unary, proto3 JSON        (the JavaScript SDK)
    application/connect+proto  streaming, protobuf binary
    application/connect+json   streaming, proto3 JSON

Responses carry exactly these strings: the Python SDK compares them as such.
Message classes come from ``agent.proto``: ``encode()``/``decode()`` and
``to_json()``/``from_json()``. Anything that fails while turning client bytes
into a message is the client's ``invalid_argument``.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from agent.connect.errors import ConnectError


class Codec(NamedTuple):
    name: str  # "proto" or "json"
    unary_type: str
    stream_type: str

    def encode(self, message: Any) -> bytes:
        if self.name == "proto":
            return bytes(message.encode())
        return json.dumps(message.to_json(), separators=(",", ":")).encode()

    def decode(self, cls: Any, data: bytes) -> Any:
        # The message classes promise DecodeError only; anything else they
        # raise on hostile input is still the client's fault, not ours.
        if self.name == "proto":
            try:
                return cls.decode(data)
            except Exception as exc:
                raise ConnectError("invalid_argument", f"malformed protobuf {cls.__name__}: {exc}") from None
        try:
            value = json.loads(data) if data.strip() else {}
        except ValueError as exc:
            raise ConnectError("invalid_argument", f"malformed JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ConnectError("invalid_argument", f"a {cls.__name__} in JSON must be an object")
        try:
            return cls.from_json(value)
        except Exception as exc:
            raise ConnectError("invalid_argument", f"invalid JSON {cls.__name__}: {exc}") from None


PROTO = Codec("proto", "application/proto", "application/connect+proto")
JSON = Codec("json", "application/json", "application/connect+json")

_BY_TYPE = {
    PROTO.unary_type: (PROTO, False),
    JSON.unary_type: (JSON, False),
    PROTO.stream_type: (PROTO, True),
    JSON.stream_type: (JSON, True),
}


def for_content_type(content_type: str | None) -> tuple[Codec, bool] | None:
    """(codec, streaming) for a request's Content-Type, parameters ignored; None when it is not Connect's."""
    if content_type is None:
        return None
    return _BY_TYPE.get(content_type.partition(";")[0].strip().lower())
