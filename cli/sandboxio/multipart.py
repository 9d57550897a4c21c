"""A multipart/form-data body with one file part, framed around a stream. Pure.

The agent's `/upload` takes the file in a part named `file`; the body is the
part's head, the file's bytes as they are read, and the closing boundary, so
its length is known up front when the file's is (no chunked encoding needed)
and the file itself is never held in memory.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field


def _header_safe(name: str) -> str:
    # The file name sits inside a quoted header parameter: quotes and line breaks would end it.
    return name.replace('"', "").replace("\r", "").replace("\n", "").replace("\\", "") or "upload"


@dataclass(frozen=True, slots=True)
class MultipartFile:
    filename: str
    boundary: str = field(default_factory=lambda: "scalebox-" + secrets.token_hex(16))

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    @property
    def head(self) -> bytes:
        return (
            f"--{self.boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{_header_safe(self.filename)}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()

    @property
    def tail(self) -> bytes:
        return f"\r\n--{self.boundary}--\r\n".encode()

    def length(self, content_length: int) -> int:
        return len(self.head) + content_length + len(self.tail)

    def stream(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        yield self.head
        yield from chunks
        yield self.tail
