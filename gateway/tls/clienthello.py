"""Pure parser for the TLS ClientHello: which name (SNI) and protocols (ALPN) a client wants.

The gateway peeks at the first bytes of a connection before deciding what to
do with it: terminate TLS with the right certificate, or pass the bytes through
untouched to a sandbox. This module never touches a socket; it is fed bytes
and answers in one of three ways, like h11: ``NEED_MORE_DATA``, a
``ClientHello``, or it raises ``NotClientHello(reason)`` as soon as the bytes
cannot be the start of one::

    reader = ClientHelloReader()
    hello = NEED_MORE_DATA
    while hello is NEED_MORE_DATA:
        data = await stream.receive_some()   # the caller owns the deadline
        if not data:
            ...                              # EOF before a whole ClientHello
        hello = reader.feed(data)

The peeked bytes are not consumed: ``reader.received`` holds everything fed so
far, to replay into the TLS engine or to forward as they are.

How it works. A ClientHello is one handshake message::

    type=1 (1 byte) | length (3 bytes) | body

carried in one or more TLS records, each of which is::

    type=0x16 (1) | version 0x03xx (2) | length (2, at most 2**14) | fragment

The reader strips the record headers as whole records arrive, appends their
fragments to the handshake buffer, and parses the body once the handshake
message is complete. Headers are checked as soon as their first byte is in,
so garbage is refused at once rather than after a deadline. A client may not
make us read more than ``MAX_CLIENT_HELLO`` bytes of its stream: a larger
declared length is refused straight away instead of waited for. Each call
costs time in proportion to the new bytes only, so a client trickling tiny
records cannot make the parser quadratic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "MAX_CLIENT_HELLO",
    "NEED_MORE_DATA",
    "ClientHello",
    "ClientHelloReader",
    "NeedMoreData",
    "NotClientHello",
    "looks_like_tls",
    "parse_client_hello",
]

# Counts record headers too. Real ClientHellos are under 2 KiB, even with
# post-quantum key shares.
MAX_CLIENT_HELLO = 64 * 1024

_RECORD_HANDSHAKE = 0x16
_RECORD_HEADER = 5
# RFC 8446 section 5.1: a plaintext record fragment is at most 2**14 bytes.
_MAX_FRAGMENT = 2**14
_HANDSHAKE_CLIENT_HELLO = 0x01
_HANDSHAKE_HEADER = 4
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
_SNI_HOST_NAME = 0
# Printable ASCII without space: the routing layer validates the name itself,
# this only keeps control bytes out of logs and lookups.
_SNI_CHARS = re.compile(rb"[\x21-\x7e]+")


class NotClientHello(Exception):
    """The bytes are not (the start of) a well-formed TLS ClientHello."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class NeedMoreData:
    """The bytes so far are a valid beginning; feed more."""


NEED_MORE_DATA = NeedMoreData()


@dataclass(frozen=True)
class ClientHello:
    """What the client asked for. ``alpn`` is in the client's order of preference.

    ALPN names are decoded as Latin-1, so ``name.encode("latin-1")`` gives the
    exact bytes back even for an unregistered protocol id.
    """

    sni: str | None
    alpn: tuple[str, ...]


def looks_like_tls(first_byte: int) -> bool:
    """Whether a connection starting with this byte could be TLS (a handshake record)."""
    return first_byte == _RECORD_HANDSHAKE


def parse_client_hello(data: bytes | bytearray) -> NeedMoreData | ClientHello:
    """Parse all the bytes received so far on a connection; see ``ClientHelloReader.feed``."""
    return ClientHelloReader().feed(data)


class ClientHelloReader:
    """Incremental ClientHello parser for one connection.

    Once it has answered with a ``ClientHello`` or raised ``NotClientHello`` it
    keeps giving the same answer; later bytes are still added to ``received``.
    """

    def __init__(self) -> None:
        self._received = bytearray()
        # Offset in _received of the first record not yet moved into _handshake.
        self._record_start = 0
        self._handshake = bytearray()
        self._outcome: ClientHello | NotClientHello | None = None

    @property
    def received(self) -> bytes:
        """Every byte fed so far, in order."""
        return bytes(self._received)

    def feed(self, data: bytes | bytearray) -> NeedMoreData | ClientHello:
        """Add ``data`` and return the ClientHello if complete, else ``NEED_MORE_DATA``.

        Raises ``NotClientHello`` when the bytes cannot be a ClientHello, or
        when a complete one would exceed ``MAX_CLIENT_HELLO`` bytes.
        """
        self._received += data
        if isinstance(self._outcome, ClientHello):
            return self._outcome
        if isinstance(self._outcome, NotClientHello):
            raise NotClientHello(self._outcome.reason)
        try:
            result = self._advance()
        except NotClientHello as exc:
            self._outcome = exc
            raise
        if isinstance(result, ClientHello):
            self._outcome = result
        return result

    def _advance(self) -> NeedMoreData | ClientHello:
        buf = self._received
        while True:
            start = self._record_start
            header = bytes(buf[start : start + _RECORD_HEADER])
            _check_record_header(header)
            if len(header) < _RECORD_HEADER:
                return NEED_MORE_DATA
            end = start + _RECORD_HEADER + int.from_bytes(header[3:5], "big")
            if end > MAX_CLIENT_HELLO:
                raise NotClientHello(f"ClientHello is longer than {MAX_CLIENT_HELLO} bytes")
            if len(buf) < end:
                # Judge the handshake header before the whole record is in.
                fragment_start = start + _RECORD_HEADER
                partial = buf[fragment_start : min(end, fragment_start + _HANDSHAKE_HEADER)]
                _check_handshake_header(bytes((self._handshake + partial)[:_HANDSHAKE_HEADER]))
                return NEED_MORE_DATA
            self._handshake += buf[start + _RECORD_HEADER : end]
            self._record_start = end
            body_length = _check_handshake_header(bytes(self._handshake[:_HANDSHAKE_HEADER]))
            if body_length is None:
                continue
            message_end = _HANDSHAKE_HEADER + body_length
            if len(self._handshake) >= message_end:
                return _parse_body(bytes(self._handshake[_HANDSHAKE_HEADER:message_end]))


def _check_record_header(header: bytes) -> None:
    """Validate as much of a record header as has arrived."""
    if len(header) >= 1 and header[0] != _RECORD_HANDSHAKE:
        raise NotClientHello(f"record type {header[0]:#04x} is not a TLS handshake record")
    if len(header) >= 2 and header[1] != 0x03:
        raise NotClientHello(f"record version major byte {header[1]:#04x} is not TLS")
    if len(header) >= 3 and header[2] > 0x04:
        raise NotClientHello(f"record version 0x03{header[2]:02x} is not TLS")
    if len(header) >= 5:
        length = int.from_bytes(header[3:5], "big")
        if length == 0:
            raise NotClientHello("empty handshake record")
        if length > _MAX_FRAGMENT:
            raise NotClientHello(f"record length {length} exceeds the TLS limit of 2**14")


def _check_handshake_header(prefix: bytes) -> int | None:
    """Validate the start of the handshake message; return its body length once known."""
    if len(prefix) >= 1 and prefix[0] != _HANDSHAKE_CLIENT_HELLO:
        raise NotClientHello(f"handshake message type {prefix[0]} is not ClientHello")
    if len(prefix) < _HANDSHAKE_HEADER:
        return None
    body_length = int.from_bytes(prefix[1:4], "big")
    # Even packed into one record the message needs a record header in front.
    if _RECORD_HEADER + _HANDSHAKE_HEADER + body_length > MAX_CLIENT_HELLO:
        raise NotClientHello(f"ClientHello declares {body_length} bytes, more than the {MAX_CLIENT_HELLO} allowed")
    return body_length


class _Cursor:
    """Reads length-prefixed TLS fields; running off the end raises ``NotClientHello``."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def at_end(self) -> bool:
        return self._pos >= len(self._data)

    def take(self, size: int, what: str) -> bytes:
        end = self._pos + size
        if end > len(self._data):
            raise NotClientHello(f"{what} runs past the end of its field")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def uint(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")

    def vector(self, length_size: int, what: str) -> bytes:
        return self.take(self.uint(length_size, f"length of {what}"), what)

    def expect_end(self, what: str) -> None:
        if not self.at_end():
            raise NotClientHello(f"unexpected bytes after {what}")


def _parse_body(body: bytes) -> ClientHello:
    # RFC 8446 section 4.1.2 (and RFC 5246 section 7.4.1.2 for TLS 1.2).
    hello = _Cursor(body)
    version = hello.uint(2, "legacy_version")
    if version >> 8 != 0x03:
        raise NotClientHello(f"ClientHello version {version:#06x} is not TLS")
    hello.take(32, "random")
    if len(hello.vector(1, "session id")) > 32:
        raise NotClientHello("session id is longer than 32 bytes")
    suites = hello.vector(2, "cipher suites")
    if not suites or len(suites) % 2:
        raise NotClientHello("cipher suite list is empty or of odd length")
    if not hello.vector(1, "compression methods"):
        raise NotClientHello("compression method list is empty")

    sni: str | None = None
    alpn: tuple[str, ...] = ()
    # Extensions may be absent altogether in a TLS 1.2 (or older) hello.
    if hello.at_end():
        return ClientHello(sni=sni, alpn=alpn)
    extensions = _Cursor(hello.vector(2, "extensions"))
    hello.expect_end("the extensions")
    seen: set[int] = set()
    while not extensions.at_end():
        ext_type = extensions.uint(2, "extension type")
        ext_data = extensions.vector(2, f"extension {ext_type}")
        if ext_type in seen:
            raise NotClientHello(f"extension {ext_type} appears twice")
        seen.add(ext_type)
        if ext_type == _EXT_SERVER_NAME:
            sni = _parse_server_name(ext_data)
        elif ext_type == _EXT_ALPN:
            alpn = _parse_alpn(ext_data)
    return ClientHello(sni=sni, alpn=alpn)


def _parse_server_name(data: bytes) -> str | None:
    # RFC 6066 section 3.
    ext = _Cursor(data)
    names = _Cursor(ext.vector(2, "server name list"))
    ext.expect_end("the server name list")
    if names.at_end():
        raise NotClientHello("server name list is empty")
    host: str | None = None
    while not names.at_end():
        name_type = names.uint(1, "server name type")
        name = names.vector(2, "server name")
        if name_type != _SNI_HOST_NAME:
            continue
        if host is not None:
            raise NotClientHello("server name extension holds two host names")
        if not _SNI_CHARS.fullmatch(name):
            raise NotClientHello("server name is empty or not printable ASCII")
        host = name.decode("ascii")
    return host


def _parse_alpn(data: bytes) -> tuple[str, ...]:
    # RFC 7301 section 3.1.
    ext = _Cursor(data)
    names = _Cursor(ext.vector(2, "ALPN protocol list"))
    ext.expect_end("the ALPN protocol list")
    if names.at_end():
        raise NotClientHello("ALPN protocol list is empty")
    protocols: list[str] = []
    while not names.at_end():
        name = names.vector(1, "ALPN protocol name")
        if not name:
            raise NotClientHello("ALPN protocol name is empty")
        protocols.append(name.decode("latin-1"))
    return tuple(protocols)
