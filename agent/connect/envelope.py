"""Connect stream envelopes, pure: bytes in, messages out.

An envelope is one flags byte, a 4-byte big-endian length, then that many
bytes. Flag 0x01 marks a compressed message, 0x02 the server's
end-of-stream message (JSON: ``{}`` or ``{"error": {"code", "message"}}``).
Clients send plain messages only: the SDKs never compress (they send
``Connect-Content-Encoding: identity``), so a compressed one is refused.

``EnvelopeReader`` is fed the request body as it arrives; ``next()`` answers

    payload             one complete message; call again for the next
    None                need more bytes: feed, then ask again
    ConnectError        raised: the stream cannot go on

A declared length above the cap is refused as soon as its header is in,
so no more than the cap (plus one read) is ever buffered.
"""

from __future__ import annotations

import json
import struct

from agent.connect.errors import ConnectError

FLAG_COMPRESSED = 0x01
FLAG_END_STREAM = 0x02
HEADER = struct.Struct(">BI")


def encode_envelope(payload: bytes, flags: int = 0) -> bytes:
    return HEADER.pack(flags, len(payload)) + payload


def end_stream(error: ConnectError | None = None) -> bytes:
    body = {} if error is None else {"error": error.to_json()}
    return encode_envelope(json.dumps(body, separators=(",", ":")).encode(), FLAG_END_STREAM)


class EnvelopeReader:
    def __init__(self, max_message: int) -> None:
        self._max_message = max_message
        self._buffer = bytearray()
        self._length: int | None = None  # payload length of the envelope whose header is read

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next(self) -> bytes | None:
        if self._length is None:
            if len(self._buffer) < HEADER.size:
                return None
            flags, length = HEADER.unpack_from(self._buffer)
            if flags & FLAG_COMPRESSED:
                raise ConnectError(
                    "unimplemented", "compressed messages are not supported: send them uncompressed (identity)"
                )
            if flags & ~FLAG_COMPRESSED & ~FLAG_END_STREAM:
                raise ConnectError("invalid_argument", f"unknown envelope flags 0x{flags:02x}")
            if flags & FLAG_END_STREAM:
                raise ConnectError("invalid_argument", "a client stream cannot carry an end-of-stream envelope")
            if length > self._max_message:
                raise ConnectError(
                    "resource_exhausted", f"message of {length} bytes is larger than the limit of {self._max_message}"
                )
            self._length = length
        end = HEADER.size + self._length
        if len(self._buffer) < end:
            return None
        payload = bytes(self._buffer[HEADER.size : end])
        del self._buffer[:end]
        self._length = None
        return payload

    def finish(self) -> None:
        """At the end of the body: raise if it stopped inside an envelope."""
        if self._buffer or self._length is not None:
            raise ConnectError("invalid_argument", "the request stream ended inside a message")
