"""The protobuf binary wire format, pure: bytes in, values out.

Only what proto3 messages need: varints (with zigzag for sint32/sint64),
fixed 32/64-bit words, length-delimited payloads and tags. Decoding never
trusts the input: every read is bounds-checked and every failure is a
`DecodeError`, so a hostile client can only ever earn an error reply.
"""

from __future__ import annotations

# Annotations stay strings (postponed evaluation): what only type checkers need
# is not imported at runtime, where collections.abc would pull in more modules.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "EGROUP",
    "FIXED32",
    "FIXED64",
    "LEN",
    "MASK32",
    "MASK64",
    "MAX_FIELD_NUMBER",
    "SGROUP",
    "VARINT",
    "DecodeError",
    "decode_fixed32",
    "decode_fixed64",
    "decode_varint",
    "decode_zigzag",
    "encode_fixed32",
    "encode_fixed64",
    "encode_len",
    "encode_tag",
    "encode_varint",
    "encode_zigzag",
    "iter_fields",
    "signed32",
    "signed64",
]

# Wire types (the low three bits of a tag).
VARINT = 0
FIXED64 = 1
LEN = 2
SGROUP = 3  # proto2 groups: never ours, but legal on the wire, so skipped
EGROUP = 4
FIXED32 = 5

MAX_FIELD_NUMBER = (1 << 29) - 1
MASK32 = (1 << 32) - 1
MASK64 = (1 << 64) - 1

# Groups only ever appear as unknown fields here; bound their nesting so a
# crafted message cannot make skipping them expensive.
_MAX_GROUP_DEPTH = 64


class DecodeError(ValueError):
    """Malformed input: truncated, over-long or otherwise not protobuf (or proto3 JSON)."""


# --- encoding -----------------------------------------------------------------

# Single-byte varints are by far the most common (tags, small lengths, bools):
# prebuilt so encoding them allocates nothing.
_SMALL = [bytes((i,)) for i in range(128)]


def encode_varint(value: int) -> bytes:
    """Base-128 varint. Negative values are taken as 64-bit two's complement,
    which makes a negative int32/int64 ten bytes long, exactly as protobuf does."""
    if 0 <= value < 128:
        return _SMALL[value]
    if value < 0:
        if value < -(1 << 63):
            raise ValueError(f"varint out of range: {value}")
        value &= MASK64
    elif value > MASK64:
        raise ValueError(f"varint out of range: {value}")
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_zigzag(value: int) -> int:
    """Map signed to unsigned so small magnitudes stay short (sint32/sint64).
    The 64-bit formula gives the same result as the 32-bit one for int32 values."""
    return ((value << 1) ^ (value >> 63)) & MASK64


def encode_tag(field_number: int, wire_type: int) -> bytes:
    if not 1 <= field_number <= MAX_FIELD_NUMBER:
        raise ValueError(f"invalid field number {field_number}")
    return encode_varint((field_number << 3) | wire_type)


def encode_fixed32(value: int) -> bytes:
    return (value & MASK32).to_bytes(4, "little")


def encode_fixed64(value: int) -> bytes:
    return (value & MASK64).to_bytes(8, "little")


def encode_len(payload: bytes) -> bytes:
    """A length-delimited payload: varint length, then the bytes."""
    return encode_varint(len(payload)) + payload


# --- decoding -----------------------------------------------------------------


def decode_varint(data: bytes, pos: int = 0) -> tuple[int, int]:
    """Read one varint at `pos`; returns (value, position after it).

    At most ten bytes, and the tenth may only carry the 64th bit: anything
    longer or larger is rejected rather than silently truncated."""
    try:
        byte = data[pos]
    except IndexError:
        raise DecodeError("truncated varint") from None
    if byte < 0x80:
        return byte, pos + 1
    result = byte & 0x7F
    shift = 7
    end = len(data)
    pos += 1
    while True:
        if pos >= end:
            raise DecodeError("truncated varint")
        byte = data[pos]
        pos += 1
        if shift == 63:
            # The tenth byte: one payload bit left, and no continuation allowed.
            if byte > 1:
                raise DecodeError("varint overflows 64 bits")
            return result | (byte << 63), pos
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def decode_zigzag(value: int) -> int:
    return (value >> 1) ^ -(value & 1)


def signed32(value: int) -> int:
    """The low 32 bits as a signed int (how int32 fields read a varint)."""
    value &= MASK32
    return value - (1 << 32) if value & 0x80000000 else value


def signed64(value: int) -> int:
    value &= MASK64
    return value - (1 << 64) if value & (1 << 63) else value


def decode_fixed32(data: bytes, pos: int = 0) -> tuple[int, int]:
    end = pos + 4
    if end > len(data):
        raise DecodeError("truncated fixed32")
    return int.from_bytes(data[pos:end], "little"), end


def decode_fixed64(data: bytes, pos: int = 0) -> tuple[int, int]:
    end = pos + 8
    if end > len(data):
        raise DecodeError("truncated fixed64")
    return int.from_bytes(data[pos:end], "little"), end


def _read_tag(data: bytes, pos: int) -> tuple[int, int, int]:
    key, pos = decode_varint(data, pos)
    if key > MASK32:
        raise DecodeError("tag does not fit in 32 bits")
    number = key >> 3
    if number == 0:
        raise DecodeError("field number 0")
    return number, key & 7, pos


def _read_value(data: bytes, pos: int, wire_type: int) -> tuple[int | bytes, int]:
    if wire_type == VARINT:
        return decode_varint(data, pos)
    if wire_type == LEN:
        length, pos = decode_varint(data, pos)
        end = pos + length
        if end > len(data):
            raise DecodeError("length-delimited field runs past the end of the buffer")
        return bytes(data[pos:end]), end
    if wire_type == FIXED32:
        return decode_fixed32(data, pos)
    if wire_type == FIXED64:
        return decode_fixed64(data, pos)
    raise DecodeError(f"invalid wire type {wire_type}")


def _skip_group(data: bytes, pos: int, number: int) -> int:
    """Skip a group's content up to its matching end tag; returns the position after it."""
    stack = [number]
    while stack:
        if len(stack) > _MAX_GROUP_DEPTH:
            raise DecodeError("groups nested too deeply")
        inner, wire_type, pos = _read_tag(data, pos)
        if wire_type == SGROUP:
            stack.append(inner)
        elif wire_type == EGROUP:
            if stack.pop() != inner:
                raise DecodeError("mismatched end-group tag")
        else:
            _, pos = _read_value(data, pos, wire_type)
    return pos


def iter_fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Walk a message's fields: yields (field_number, wire_type, value).

    `value` is an int for VARINT, FIXED32 and FIXED64 (unsigned, raw bits) and
    bytes for LEN. Groups (legacy proto2) are validated and skipped, since no
    proto3 message has them. Raises DecodeError on malformed input."""
    pos = 0
    end = len(data)
    while pos < end:
        number, wire_type, pos = _read_tag(data, pos)
        if wire_type == SGROUP:
            pos = _skip_group(data, pos, number)
            continue
        if wire_type == EGROUP:
            raise DecodeError("end-group tag without a start")
        value, pos = _read_value(data, pos, wire_type)
        yield number, wire_type, value
