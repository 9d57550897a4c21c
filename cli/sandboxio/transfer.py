"""`sandbox upload` and `sandbox download`: files streamed in chunks, with an optional progress meter.

Neither direction holds a file in memory: uploads read the local file chunk by
chunk into the request body, downloads write each chunk as it arrives. A
download goes to a temporary file beside its destination and is renamed into
place once complete, so an interrupted one never leaves a truncated file under
the real name. "-" means stdin (upload) or stdout (download).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from cli.sandboxio.errors import ConnectionLost
from cli.sandboxio.transport import Backend, Upload

CHUNK = 256 * 1024
STDIO = "-"


class Meter(Protocol):
    def __enter__(self) -> Meter: ...

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def start(self, total: int | None) -> None: ...

    def advance(self, count: int) -> None: ...


class NoMeter:
    def __enter__(self) -> NoMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def start(self, total: int | None) -> None:
        return None

    def advance(self, count: int) -> None:
        return None


class RichMeter:
    """A rich progress bar on stderr (stdout may be carrying the file itself)."""

    def __init__(self, description: str, console: Console | None = None) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
            transient=False,
        )
        self._description = description
        self._task: TaskID | None = None

    def __enter__(self) -> RichMeter:
        self._progress.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._progress.__exit__(kind, exc, tb)

    def start(self, total: int | None) -> None:
        self._task = self._progress.add_task(self._description, total=total)

    def advance(self, count: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, count)


def meter_for(description: str, *, enabled: bool) -> Meter:
    return RichMeter(description) if enabled else NoMeter()


def read_chunks(source: BinaryIO, on_chunk: Callable[[int], None]) -> Iterator[bytes]:
    while chunk := source.read(CHUNK):
        on_chunk(len(chunk))
        yield chunk


def remote_upload_path(remote: str, local: str) -> str:
    """A remote path ending in "/" names a directory: the file keeps its local name there."""
    if remote.endswith("/") and local != STDIO:
        return remote + os.path.basename(local)
    return remote


def upload(backend: Backend, local: str, remote: str, *, meter: Meter) -> int:
    """Send `local` (a path or "-") to `remote`; return the number of bytes sent."""
    sent = 0

    def count(n: int) -> None:
        nonlocal sent
        sent += n
        meter.advance(n)

    with contextlib.ExitStack() as stack:
        if local == STDIO:
            source: BinaryIO = sys.stdin.buffer
            length = None
        else:
            source = stack.enter_context(open(local, "rb"))
            length = os.fstat(source.fileno()).st_size
        name = "stdin" if local == STDIO else os.path.basename(local)
        with meter:
            meter.start(length)
            backend.upload(remote_upload_path(remote, local), Upload(name, length, read_chunks(source, count)))
    return sent


def local_download_path(remote: str, local: str) -> Path:
    """An existing local directory receives the file under its remote name."""
    path = Path(local)
    if path.is_dir():
        name = posixpath.basename(remote.rstrip("/")) or "download"
        return path / name
    return path


def download(backend: Backend, remote: str, local: str, *, meter: Meter, stdout: BinaryIO | None = None) -> int:
    """Receive `remote` into `local` (a path, a directory or "-"); return the number of bytes received."""
    with backend.download(remote) as body, meter:
        meter.start(body.length)
        if local == STDIO:
            out = stdout or sys.stdout.buffer
            received = _copy(body.chunks, out, meter, body.length)
            out.flush()
            return received
        return _write_file(body.chunks, local_download_path(remote, local), meter, body.length)


def _copy(chunks: Iterator[bytes], out: BinaryIO, meter: Meter, expected: int | None) -> int:
    received = 0
    for chunk in chunks:
        out.write(chunk)
        received += len(chunk)
        meter.advance(len(chunk))
    if expected is not None and received != expected:
        raise ConnectionLost(f"the download was cut short: {received} of {expected} bytes arrived")
    return received


def _write_file(chunks: Iterator[bytes], target: Path, meter: Meter, expected: int | None) -> int:
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            received = _copy(chunks, out, meter, expected)
        # mkstemp makes the file 0600; a finished download gets what a new file normally gets.
        os.chmod(temp, 0o666 & ~_umask())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return received


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
