"""The ClientHello parser on real hellos from OpenSSL: re-chunked, re-recorded, damaged, faked."""

from __future__ import annotations

import random
import ssl

import pytest

from gateway.tls.clienthello import (
    MAX_CLIENT_HELLO,
    NEED_MORE_DATA,
    ClientHello,
    ClientHelloReader,
    NeedMoreData,
    NotClientHello,
    looks_like_tls,
    parse_client_hello,
)

HOST = "abc.sbx.localhost"


def _real_hello(server_hostname: str | None = HOST, alpn: list[str] | None = None) -> bytes:
    """The first flight of Python's own TLS client, taken from a MemoryBIO."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if server_hostname is None:
        ctx.check_hostname = False
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    outgoing = ssl.MemoryBIO()
    tls = ctx.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def _handshake_message(records: bytes) -> bytes:
    """Strip the record headers from a stream of handshake records."""
    message = b""
    while records:
        length = int.from_bytes(records[3:5], "big")
        message += records[5 : 5 + length]
        records = records[5 + length :]
    return message


def _records(message: bytes, size: int, version: bytes = b"\x03\x01") -> bytes:
    """Wrap a handshake message in handshake records of at most ``size`` bytes each."""
    chunks = [message[i : i + size] for i in range(0, len(message), size)]
    return b"".join(b"\x16" + version + len(c).to_bytes(2, "big") + c for c in chunks)


def _fake_hello(extensions: list[tuple[int, bytes]] | None) -> bytes:
    """A minimal ClientHello with the given extensions, in one record."""
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    if extensions is not None:
        ext = b"".join(t.to_bytes(2, "big") + len(d).to_bytes(2, "big") + d for t, d in extensions)
        body += len(ext).to_bytes(2, "big") + ext
    return _records(b"\x01" + len(body).to_bytes(3, "big") + body, 2**14)


def _vec(length_size: int, data: bytes) -> bytes:
    return len(data).to_bytes(length_size, "big") + data


def _sni(*names: tuple[int, bytes]) -> tuple[int, bytes]:
    return 0, _vec(2, b"".join(bytes([t]) + _vec(2, n) for t, n in names))


def _outcome(data: bytes) -> NeedMoreData | ClientHello | NotClientHello:
    try:
        return parse_client_hello(data)
    except NotClientHello as exc:
        return exc


@pytest.fixture(scope="module")
def hello() -> bytes:
    return _real_hello(alpn=["h2", "http/1.1"])


def test_real_hello(hello: bytes) -> None:
    assert looks_like_tls(hello[0])
    assert parse_client_hello(hello) == ClientHello(sni=HOST, alpn=("h2", "http/1.1"))


def test_real_hello_without_sni_or_alpn() -> None:
    assert parse_client_hello(_real_hello(server_hostname=None)) == ClientHello(sni=None, alpn=())


def test_looks_like_tls() -> None:
    assert looks_like_tls(0x16)
    assert not looks_like_tls(ord("G"))
    assert not looks_like_tls(0x80)  # an SSLv2-style hello


def test_every_prefix_needs_more_data(hello: bytes) -> None:
    for end in range(len(hello)):
        assert parse_client_hello(hello[:end]) is NEED_MORE_DATA, end


def test_fed_one_byte_at_a_time(hello: bytes) -> None:
    reader = ClientHelloReader()
    results = [reader.feed(hello[i : i + 1]) for i in range(len(hello))]
    assert results[:-1] == [NEED_MORE_DATA] * (len(hello) - 1)
    assert results[-1] == ClientHello(sni=HOST, alpn=("h2", "http/1.1"))
    assert reader.received == hello


@pytest.mark.parametrize("record_size", [1, 2, 3, 4, 5, 7, 64, 200])
def test_hello_split_across_records(hello: bytes, record_size: int) -> None:
    stream = _records(_handshake_message(hello), record_size)
    assert parse_client_hello(stream) == ClientHello(sni=HOST, alpn=("h2", "http/1.1"))
    reader = ClientHelloReader()
    rng = random.Random(record_size)
    pos = 0
    while pos < len(stream):
        step = rng.randint(1, 9)
        result = reader.feed(stream[pos : pos + step])
        pos += step
        assert (result is NEED_MORE_DATA) == (pos < len(stream))
    assert reader.received == stream


def test_bytes_after_the_hello_are_kept(hello: bytes) -> None:
    early_data = b"\x17\x03\x03\x00\x05hello"
    reader = ClientHelloReader()
    assert reader.feed(hello + early_data[:3]) == ClientHello(sni=HOST, alpn=("h2", "http/1.1"))
    assert reader.feed(early_data[3:]) == ClientHello(sni=HOST, alpn=("h2", "http/1.1"))
    assert reader.received == hello + early_data


def test_every_truncated_message_is_refused_or_parsed(hello: bytes) -> None:
    """Cut the message short but make the length fields agree, as a lying client would."""
    body = _handshake_message(hello)[4:]
    for end in range(len(body)):
        stream = _records(b"\x01" + end.to_bytes(3, "big") + body[:end], 2**14)
        result = _outcome(stream)
        assert isinstance(result, NotClientHello | ClientHello), end


def test_mutated_hellos_never_crash(hello: bytes) -> None:
    rng = random.Random(1234)
    for _ in range(3000):
        data = bytearray(hello)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        cut = rng.randint(0, len(data))
        result = _outcome(bytes(data[:cut]))
        assert isinstance(result, NeedMoreData | ClientHello | NotClientHello)


def test_random_garbage_never_crashes() -> None:
    rng = random.Random(5678)
    for i in range(3000):
        # Most garbage dies on the first byte; a plausible header gets it further.
        prefix = b"\x16\x03\x01" + rng.randbytes(2) + b"\x01" if i % 2 else b""
        data = prefix + rng.randbytes(rng.randint(0, 300))
        result = _outcome(data)
        assert isinstance(result, NeedMoreData | ClientHello | NotClientHello)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"GET / HTTP/1.1\r\n", "not a TLS handshake record"),
        (b"\x15\x03\x01\x00\x02\x02\x28", "not a TLS handshake record"),
        (b"\x16\x02", "not TLS"),
        (b"\x16\x03\x07", "not TLS"),
        (b"\x16\x03\x01\x00\x00", "empty handshake record"),
        (b"\x16\x03\x01\x40\x01", "exceeds the TLS limit"),
        (b"\x16\x03\x03\x00\x40\x02", "not ClientHello"),
        (b"\x16\x03\x01\x00\x40\x01\x01\x00\x00", "more than the 65536 allowed"),
    ],
)
def test_refused_early_without_waiting(data: bytes, reason: str) -> None:
    with pytest.raises(NotClientHello, match=reason) as caught:
        parse_client_hello(data)
    assert reason in caught.value.reason


def test_oversize_hello_in_small_records_hits_the_cap() -> None:
    """A message under the size limit whose record headers push it over is refused."""
    body_length = MAX_CLIENT_HELLO - 600
    header = b"\x01" + body_length.to_bytes(3, "big")
    reader = ClientHelloReader()
    record = b"\x16\x03\x01\x00\x64" + bytes(100)
    assert reader.feed(b"\x16\x03\x01\x00\x64" + header + bytes(96)) is NEED_MORE_DATA
    with pytest.raises(NotClientHello, match="longer than"):
        while True:
            assert reader.feed(record) is NEED_MORE_DATA
    assert len(reader.received) <= MAX_CLIENT_HELLO + len(record)


def test_reader_repeats_its_verdict(hello: bytes) -> None:
    reader = ClientHelloReader()
    with pytest.raises(NotClientHello):
        reader.feed(b"GET /")
    with pytest.raises(NotClientHello):
        reader.feed(hello)


@pytest.mark.parametrize(
    ("extensions", "expected"),
    [
        (None, ClientHello(sni=None, alpn=())),
        ([], ClientHello(sni=None, alpn=())),
        ([_sni((0, b"a.sbx.localhost"))], ClientHello(sni="a.sbx.localhost", alpn=())),
        ([_sni((7, b"\xff"), (0, b"a.b"))], ClientHello(sni="a.b", alpn=())),
        ([(0x0A0A, b""), (16, _vec(2, _vec(1, b"\xffx")))], ClientHello(sni=None, alpn=("\xffx",))),
    ],
)
def test_fake_hellos(extensions: list[tuple[int, bytes]] | None, expected: ClientHello) -> None:
    assert parse_client_hello(_fake_hello(extensions)) == expected


@pytest.mark.parametrize(
    ("extensions", "reason"),
    [
        ([(21, b""), (21, b"")], "appears twice"),
        ([_sni((0, b"a.b"), (0, b"c.d"))], "two host names"),
        ([_sni((0, "é.b".encode()))], "not printable ASCII"),
        ([_sni((0, b"a\x00b"))], "not printable ASCII"),
        ([_sni((0, b""))], "not printable ASCII"),
        ([(0, _vec(2, b""))], "server name list is empty"),
        ([(0, _vec(2, b"\x00\x00\x05ab"))], "runs past the end"),
        ([(0, _vec(2, b"\x00\x00\x01a") + b"x")], "unexpected bytes"),
        ([(16, _vec(2, b""))], "ALPN protocol list is empty"),
        ([(16, _vec(2, b"\x00"))], "ALPN protocol name is empty"),
    ],
)
def test_bad_fake_hellos(extensions: list[tuple[int, bytes]], reason: str) -> None:
    with pytest.raises(NotClientHello, match=reason):
        parse_client_hello(_fake_hello(extensions))
