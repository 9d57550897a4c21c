"""Incremental multipart/form-data parsing (RFC 7578): bytes in, events out.

Nothing here does I/O. Feed the body in chunks of any size; each ``feed``
returns the events that chunk completed:

    PartStart(name, filename)   a part's headers are in
    PartData(data)              some of its content, in order
    PartEnd()                   its content is complete
    Finished()                  the closing delimiter was read; later bytes are ignored

A body that breaks the format raises ``MultipartError``; ``close()`` raises it
when the body ended before the closing delimiter. Memory stays bounded
whatever the part sizes: content is handed out as it arrives, less the few
bytes that could be the start of a delimiter, and part headers are capped.
"""

from __future__ import annotations

import re
from typing import NamedTuple, Union
from urllib.parse import quote, unquote

MAX_HEADER_BYTES = 16 * 1024
_MAX_BOUNDARY = 200  # RFC 2046 says 70; be lenient with what clients generate


class MultipartError(ValueError):
    """The body is not valid multipart/form-data."""


class PartStart(NamedTuple):
    name: str
    filename: str | None


class PartData(NamedTuple):
    data: bytes


class PartEnd(NamedTuple):
    pass


class Finished(NamedTuple):
    pass


Event = Union[PartStart, PartData, PartEnd, Finished]

_PREAMBLE, _AFTER_DELIMITER, _HEADERS, _BODY, _EPILOGUE = range(5)


class MultipartParser:
    def __init__(self, boundary: bytes, max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        if not 0 < len(boundary) <= _MAX_BOUNDARY:
            raise MultipartError("the multipart boundary must be 1 to 200 bytes long")
        # Every delimiter but the first follows a CRLF that belongs to it; a
        # CRLF put in front of the body lets the first one match the same way.
        self._delimiter = b"\r\n--" + boundary
        self._buffer = b"\r\n"
        self._state = _PREAMBLE
        self._max_header_bytes = max_header_bytes

    @property
    def finished(self) -> bool:
        return self._state == _EPILOGUE

    def feed(self, data: bytes) -> list[Event]:
        if self._state == _EPILOGUE:
            return []
        self._buffer += data
        events: list[Event] = []
        while self._step(events):
            pass
        return events

    def close(self) -> None:
        if self._state != _EPILOGUE:
            raise MultipartError("the multipart body ended before its closing boundary")

    def _step(self, events: list[Event]) -> bool:
        """Advance by one state transition if the buffer allows; False when it needs more."""
        buf = self._buffer
        delimiter = self._delimiter
        if self._state == _PREAMBLE:
            at = buf.find(delimiter)
            if at < 0:
                self._buffer = buf[-(len(delimiter) - 1) :]
                return False
            self._buffer = buf[at + len(delimiter) :]
            self._state = _AFTER_DELIMITER
            return True
        if self._state == _AFTER_DELIMITER:
            if len(buf) < 2:
                return False
            if buf[:2] == b"--":
                self._buffer = b""
                self._state = _EPILOGUE
                events.append(Finished())
                return False
            end = buf.find(b"\r\n")
            # Only transport padding (spaces, tabs) may sit between a delimiter
            # and its CRLF, whose CR may already be in while its LF is not.
            padding = buf[:end] if end >= 0 else buf[:-1] if buf.endswith(b"\r") else buf
            if padding.strip(b" \t") or len(padding) > 256:
                raise MultipartError("malformed multipart boundary line")
            if end < 0:
                return False
            self._buffer = buf[end + 2 :]
            self._state = _HEADERS
            return True
        if self._state == _HEADERS:
            if buf.startswith(b"\r\n"):  # a part without headers
                block, rest = b"", buf[2:]
            else:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > self._max_header_bytes:
                        raise MultipartError("multipart part headers are too large")
                    return False
                block, rest = buf[:end], buf[end + 4 :]
            if len(block) > self._max_header_bytes:
                raise MultipartError("multipart part headers are too large")
            events.append(_part_start(block))
            self._buffer = rest
            self._state = _BODY
            return True
        if self._state == _BODY:
            at = buf.find(delimiter)
            if at >= 0:
                if at:
                    events.append(PartData(buf[:at]))
                events.append(PartEnd())
                self._buffer = buf[at + len(delimiter) :]
                self._state = _AFTER_DELIMITER
                return True
            # Hand out all but what could be the beginning of a delimiter.
            cut = len(buf) - (len(delimiter) - 1)
            if cut > 0:
                events.append(PartData(buf[:cut]))
                self._buffer = buf[cut:]
            return False
        return False


def _part_start(block: bytes) -> PartStart:
    disposition = None
    # Raw bytes stay recoverable as file-name bytes (surrogateescape), whatever
    # the client's encoding.
    for line in block.decode("utf-8", "surrogateescape").split("\r\n"):
        name, sep, value = line.partition(":")
        if not sep:
            raise MultipartError("malformed multipart part header")
        if name.strip().lower() == "content-disposition":
            disposition = value
    if disposition is None:
        raise MultipartError("a multipart part has no Content-Disposition header")
    kind, params = parse_header_params(disposition)
    if kind.lower() != "form-data" or "name" not in params:
        raise MultipartError("a multipart part is not a named form-data field")
    return PartStart(name=params["name"], filename=_filename(params))


def _filename(params: dict) -> str | None:
    extended = params.get("filename*")
    if extended is not None:  # RFC 5987: charset'language'percent-encoded
        charset, _, rest = extended.partition("'")
        _, _, encoded = rest.partition("'")
        try:
            return unquote(encoded, encoding=charset or "utf-8", errors="surrogateescape")
        except LookupError:  # an unknown charset: fall back to the plain parameter
            pass
    name = params.get("filename")
    if name is None:
        return None
    # HTML forms (and httpx, undici) percent-encode quotes and control characters.
    return _HTML5_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), name)


_HTML5_ESCAPE = re.compile(r"%(22|[01][0-9A-Fa-f])")


def parse_header_params(value: str) -> tuple[str, dict]:
    """``'form-data; name="file"; filename="a b"'`` -> ``("form-data", {"name": "file", "filename": "a b"})``.

    Parameter names are lower-cased. In a quoted value ``\\"`` and ``\\\\`` are
    escapes; any other backslash is kept, since browsers send Windows-style
    names unescaped.
    """
    main, _, rest = value.partition(";")
    params: dict = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t;":
            i += 1
        start = i
        while i < n and rest[i] not in "=;":
            i += 1
        key = rest[start:i].strip().lower()
        if i >= n or rest[i] == ";":
            if key:
                params[key] = ""
            continue
        i += 1  # the "="
        while i < n and rest[i] in " \t":
            i += 1
        if i < n and rest[i] == '"':
            i += 1
            chars = []
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n and rest[i + 1] in '"\\':
                    i += 1
                chars.append(rest[i])
                i += 1
            i += 1  # the closing quote
            item = "".join(chars)
            while i < n and rest[i] != ";":
                i += 1
        else:
            start = i
            while i < n and rest[i] != ";":
                i += 1
            item = rest[start:i].strip()
        if key:
            params[key] = item
    return main.strip(), params


def boundary_of(content_type: str) -> bytes:
    """The boundary of a ``multipart/form-data`` Content-Type; MultipartError otherwise."""
    kind, params = parse_header_params(content_type)
    if kind.lower() != "multipart/form-data":
        raise MultipartError("the body must be multipart/form-data")
    boundary = params.get("boundary", "")
    try:
        raw = boundary.encode("ascii")
    except UnicodeEncodeError:
        raise MultipartError("the multipart boundary must be ASCII") from None
    if not raw:
        raise MultipartError("the multipart/form-data Content-Type has no boundary")
    return raw


def content_disposition(name: str) -> str:
    """``attachment`` with the file name: plain ASCII, plus RFC 6266's ``filename*`` when it is not."""
    plain = "".join(c if " " <= c < "\x7f" and c not in '"\\' else "_" for c in name)
    value = f'attachment; filename="{plain}"'
    if plain != name:
        raw = name.encode("utf-8", "surrogateescape")
        value += "; filename*=UTF-8''" + quote(raw, safe="")
    return value
