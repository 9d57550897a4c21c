"""Connect stream envelopes on the client side, pure: bytes in, frames out.

An envelope is one flags byte, a 4-byte big-endian length, then that many bytes
of message. Flag 0x02 marks the server's last message (end of stream: `{}` or
`{"error": {...}}`); flag 0x01 a compressed one, which we never ask for and so
refuse.

`EnvelopeDecoder` is fed the response body as it arrives; `next()` answers

    Frame               one complete envelope; call again for the next
    None                need more bytes: feed, then ask again
    ProtocolError       raised: the stream cannot go on

A declared length above the cap is refused as soon as its header is in, so at
most the cap plus one read is ever buffered.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cli.sandboxio.errors import ProtocolError

FLAG_COMPRESSED = 0x01
FLAG_END_STREAM = 0x02
HEADER = struct.Struct(">BI")
MAX_MESSAGE = 16 * 1024 * 1024  # the agent's own cap per message


@dataclass(frozen=True, slots=True)
class Frame:
    flags: int
    payload: bytes

    @property
    def end_stream(self) -> bool:
        return bool(self.flags & FLAG_END_STREAM)


def encode(payload: bytes, flags: int = 0) -> bytes:
    return HEADER.pack(flags, len(payload)) + payload


class EnvelopeDecoder:
    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._max_message = max_message
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next(self) -> Frame | None:
        if len(self._buffer) < HEADER.size:
            return None
        flags, length = HEADER.unpack_from(self._buffer)
        if flags & FLAG_COMPRESSED:
            raise ProtocolError("the sandbox sent a compressed message, which was not asked for")
        if flags & ~FLAG_END_STREAM:
            raise ProtocolError(f"the sandbox sent a message with unknown flags 0x{flags:02x}")
        if length > self._max_message:
            raise ProtocolError(f"the sandbox sent a message of {length} bytes, over the limit of {self._max_message}")
        end = HEADER.size + length
        if len(self._buffer) < end:
            return None
        payload = bytes(self._buffer[HEADER.size : end])
        del self._buffer[:end]
        return Frame(flags, payload)

    @property
    def pending(self) -> int:
        """Bytes fed but not yet returned: non-zero at the end of a body means it was cut."""
        return len(self._buffer)
