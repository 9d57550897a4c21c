"""agent.proto.wire: the protobuf binary wire format, checked by hand-computed bytes."""

from __future__ import annotations

import random

import pytest

from agent.proto.wire import (
    EGROUP,
    FIXED32,
    FIXED64,
    LEN,
    SGROUP,
    VARINT,
    DecodeError,
    decode_fixed32,
    decode_fixed64,
    decode_varint,
    decode_zigzag,
    encode_fixed32,
    encode_fixed64,
    encode_len,
    encode_tag,
    encode_varint,
    encode_zigzag,
    iter_fields,
    signed32,
    signed64,
)

VARINTS = [
    (0, b"\x00"),
    (1, b"\x01"),
    (127, b"\x7f"),
    (128, b"\x80\x01"),
    (300, b"\xac\x02"),
    (16383, b"\xff\x7f"),
    (16384, b"\x80\x80\x01"),
    (2**32 - 1, b"\xff\xff\xff\xff\x0f"),
    (2**63 - 1, b"\xff\xff\xff\xff\xff\xff\xff\xff\x7f"),
    (2**63, b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01"),
    (2**64 - 1, b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"),
]


@pytest.mark.parametrize(("value", "encoded"), VARINTS)
def test_varint_edges(value: int, encoded: bytes) -> None:
    assert encode_varint(value) == encoded
    assert decode_varint(encoded) == (value, len(encoded))
    # Decoding from an offset, with trailing data after it.
    assert decode_varint(b"\x99" + encoded + b"\x05", 1) == (value, 1 + len(encoded))


@pytest.mark.parametrize("value", [-1, -2, -(2**31), -(2**63)])
def test_negative_varints_take_ten_bytes(value: int) -> None:
    encoded = encode_varint(value)
    assert len(encoded) == 10
    raw, end = decode_varint(encoded)
    assert end == 10
    assert signed64(raw) == value
    assert encode_varint(-1) == b"\xff" * 9 + b"\x01"


def test_varint_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError):
        encode_varint(2**64)
    with pytest.raises(ValueError):
        encode_varint(-(2**63) - 1)


@pytest.mark.parametrize("data", [b"", b"\x80", b"\xff\xff", b"\xff" * 9])
def test_truncated_varint(data: bytes) -> None:
    with pytest.raises(DecodeError, match="truncated"):
        decode_varint(data)


def test_eleven_byte_varint_is_refused() -> None:
    with pytest.raises(DecodeError, match="overflow"):
        decode_varint(b"\xff" * 10 + b"\x01")
    with pytest.raises(DecodeError, match="overflow"):
        decode_varint(b"\x80" * 10 + b"\x00")


def test_tenth_byte_overflow_is_refused() -> None:
    # The tenth byte carries only bit 63: 2 there would be bit 64.
    with pytest.raises(DecodeError, match="overflow"):
        decode_varint(b"\xff" * 9 + b"\x02")
    assert decode_varint(b"\x80" * 9 + b"\x01") == (2**63, 10)


def test_non_minimal_varints_are_accepted() -> None:
    # Protobuf decoders accept padded varints; so do we.
    assert decode_varint(b"\x81\x80\x80\x00") == (1, 4)


@pytest.mark.parametrize(
    ("value", "zigzag"),
    [
        (0, 0),
        (-1, 1),
        (1, 2),
        (-2, 3),
        (2**31 - 1, 2**32 - 2),
        (-(2**31), 2**32 - 1),
        (2**63 - 1, 2**64 - 2),
        (-(2**63), 2**64 - 1),
    ],
)
def test_zigzag(value: int, zigzag: int) -> None:
    assert encode_zigzag(value) == zigzag
    assert decode_zigzag(zigzag) == value


def test_signed_views() -> None:
    assert signed32(2**32 - 1) == -1
    assert signed32(2**31) == -(2**31)
    assert signed32(2**31 - 1) == 2**31 - 1
    assert signed32(2**64 - 1) == -1  # a 10-byte negative int32
    assert signed64(2**64 - 1) == -1
    assert signed64(2**63 - 1) == 2**63 - 1


def test_fixed() -> None:
    assert encode_fixed32(1) == b"\x01\x00\x00\x00"
    assert encode_fixed32(-1) == b"\xff\xff\xff\xff"
    assert encode_fixed64(2**64 - 1) == b"\xff" * 8
    assert decode_fixed32(b"\x00\x01\x02\x03\x04", 1) == (0x04030201, 5)
    assert decode_fixed64(b"\x01" + b"\x00" * 7) == (1, 8)
    with pytest.raises(DecodeError):
        decode_fixed32(b"\x00\x00\x00")
    with pytest.raises(DecodeError):
        decode_fixed64(b"\x00" * 7)


def test_tags_and_len() -> None:
    assert encode_tag(1, VARINT) == b"\x08"
    assert encode_tag(2, LEN) == b"\x12"
    assert encode_tag(16, VARINT) == b"\x80\x01"
    assert encode_tag(2**29 - 1, FIXED32) == encode_varint(((2**29 - 1) << 3) | 5)
    for bad in (0, 2**29):
        with pytest.raises(ValueError):
            encode_tag(bad, VARINT)
    assert encode_len(b"abc") == b"\x03abc"
    assert encode_len(b"x" * 200)[:2] == b"\xc8\x01"


def test_iter_fields_walks_every_wire_type() -> None:
    data = (
        encode_tag(1, VARINT)
        + encode_varint(150)
        + encode_tag(2, LEN)
        + encode_len(b"testing")
        + encode_tag(3, FIXED32)
        + encode_fixed32(7)
        + encode_tag(4, FIXED64)
        + encode_fixed64(2**64 - 1)
        + encode_tag(1000, VARINT)
        + encode_varint(-1)
    )
    assert list(iter_fields(data)) == [
        (1, VARINT, 150),
        (2, LEN, b"testing"),
        (3, FIXED32, 7),
        (4, FIXED64, 2**64 - 1),
        (1000, VARINT, 2**64 - 1),
    ]
    assert list(iter_fields(b"")) == []


def test_iter_fields_skips_groups() -> None:
    group = encode_tag(5, SGROUP) + encode_tag(1, VARINT) + b"\x01"
    group += encode_tag(6, SGROUP) + encode_tag(6, EGROUP)  # nested
    group += encode_tag(5, EGROUP)
    assert list(iter_fields(group + b"\x08\x2a")) == [(1, VARINT, 42)]


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x08", "truncated varint"),  # tag, no value
        (b"\x12\x05abc", "past the end"),  # length beyond the buffer
        (b"\x12\xff\xff\xff\xff\x0f", "past the end"),
        (b"\x0d\x00\x00", "truncated fixed32"),
        (b"\x09\x00", "truncated fixed64"),
        (b"\x0e\x00", "invalid wire type 6"),
        (b"\x0f\x00", "invalid wire type 7"),
        (b"\x00\x00", "field number 0"),
        (b"\x80\x80\x80\x80\x80\x01", "32 bits"),  # tag wider than 32 bits
        (b"\x0c", "end-group"),
        (b"\x0b\x08\x01", "truncated"),  # group never closed
        (b"\x0b\x14", "mismatched"),  # group 1 closed as group 2
        (b"\x08" + b"\xff" * 10 + b"\x01", "overflow"),
    ],
)
def test_iter_fields_rejects_malformed_input(data: bytes, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        list(iter_fields(data))


def test_deeply_nested_groups_are_refused() -> None:
    data = encode_tag(1, SGROUP) * 100 + encode_tag(1, EGROUP) * 100
    with pytest.raises(DecodeError, match="deeply"):
        list(iter_fields(data))


def test_random_varints_round_trip() -> None:
    rng = random.Random(1)
    for _ in range(2000):
        value = rng.getrandbits(rng.randint(1, 64))
        encoded = encode_varint(value)
        assert decode_varint(encoded) == (value, len(encoded))
        signed = value - 2**63
        assert signed64(decode_varint(encode_varint(signed))[0]) == signed


def test_random_bytes_only_ever_raise_decode_error() -> None:
    rng = random.Random(2)
    for _ in range(3000):
        data = rng.randbytes(rng.randint(0, 40))
        try:
            for _number, wire_type, value in iter_fields(data):
                assert wire_type in (VARINT, FIXED32, FIXED64, LEN)
                assert isinstance(value, bytes if wire_type == LEN else int)
        except DecodeError:
            pass
