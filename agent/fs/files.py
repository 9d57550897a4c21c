"""The file work behind the HTTP endpoints, without HTTP.

    open_download(candidates)        the file a download names, open
    FileBody(fd, path)               its content as an async iterator of chunks
    Upload(user, query_path)         one upload: parser events in, files
                                     staged, then put in place by ``finish``

Every system call that touches a path runs as the request's user.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import stat
from typing import Any

from agent import users
from agent.fs.errors import FsError, from_os_error
from agent.fs.multipart import PartData, PartEnd, PartStart
from agent.fs.paths import upload_target, wire_text

CHUNK = 64 * 1024
MAX_FIELD_BYTES = 64 * 1024  # a form field other than a file: a path, say
_TEMP_PREFIX = ".upload-"


def open_download(candidates: list[str]) -> tuple[int, str]:
    """The first of ``candidates`` that exists, open for reading, and its path.

    Anything but a regular file is refused: a directory has no content, and
    reading a FIFO or a device could block the agent or never end.
    """
    for i, path in enumerate(candidates):
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below).
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
        except FileNotFoundError as exc:
            if i + 1 < len(candidates):
                continue
            raise from_os_error(exc, "open", candidates[0]) from None
        except OSError as exc:
            raise from_os_error(exc, "open", path) from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            what = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise FsError("invalid_argument", f"cannot download {path}: it is {what}")
        return fd, path
    raise FsError("invalid_argument", "no path to download")


class FileBody:
    """An open file as an async iterator of chunks, closing it when done.

    ``length`` is the Content-Length to announce, or None to send chunked:
    files that fit in one chunk are read ahead and sent as read (/sys files
    claim 4096 bytes whatever they hold), files that claim no size (/proc)
    are sent until EOF, others with their size, exactly.
    """

    def __init__(self, fd: int, path: str) -> None:
        self._fd = fd
        try:
            size = os.fstat(fd).st_size
            self._head = _read_up_to(fd, CHUNK)
        except OSError as exc:  # EISDIR cannot happen (refused at open); EIO can
            self.close()
            raise from_os_error(exc, "read", path) from None
        if len(self._head) < CHUNK:
            self.length: int | None = len(self._head)
            self._remaining: int | None = 0
        elif size >= CHUNK:
            self.length = size
            self._remaining = size - len(self._head)
        else:
            self.length = None
            self._remaining = None

    def __aiter__(self) -> FileBody:
        return self

    async def __anext__(self) -> bytes:
        if self._head:
            head, self._head = self._head, b""
            return head
        if self._fd < 0 or self._remaining == 0:
            self.close()
            raise StopAsyncIteration
        size = CHUNK if self._remaining is None else min(CHUNK, self._remaining)
        try:
            # A blocking read, but of a local file: quicker than a thread hop.
            data = os.read(self._fd, size)
        except BaseException:
            self.close()
            raise
        if not data:
            self.close()
            if self._remaining:  # announced more than there is: the peer must see a broken body
                raise OSError(errno.EIO, "the file shrank while it was being sent")
            raise StopAsyncIteration
        if self._remaining is not None:
            self._remaining -= len(data)
        return data

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:  # a response never sent must not leak its descriptor
        self.close()


def _read_up_to(fd: int, limit: int) -> bytes:
    parts = []
    total = 0
    while total < limit:
        data = os.read(fd, limit - total)
        if not data:
            break
        parts.append(data)
        total += len(data)
    return b"".join(parts)


class _Staged:
    def __init__(self, filename: str | None, temp: str, fd: int) -> None:
        self.filename = filename
        self.temp = temp
        self.fd = fd


class Upload:
    """One upload's state: the parts seen so far, the files staged on disk.

    Its methods are synchronous and do their system calls as ``user``.
    """

    def __init__(self, user: Any, query_path: str | None) -> None:
        self._user = user
        self._query_path = query_path
        self._fields: dict[str, str] = {}
        self._staged: list[_Staged] = []
        self._file: _Staged | None = None
        self._field: tuple[str, bytearray] | None = None

    def _path_param(self) -> str | None:
        if self._query_path:
            return self._query_path
        return self._fields.get("path") or None

    def on_event(self, event: object) -> None:
        if isinstance(event, PartStart):
            if event.filename is not None or event.name == "file":
                self._file = self._stage(event.filename)
            else:
                self._field = (event.name, bytearray())
        elif isinstance(event, PartData):
            if self._file is not None:
                self._write(self._file, event.data)
            elif self._field is not None:
                value = self._field[1]
                value += event.data
                if len(value) > MAX_FIELD_BYTES:
                    raise FsError("invalid_argument", f"form field {self._field[0]!r} is too large")
        elif isinstance(event, PartEnd):
            if self._file is not None:
                os.close(self._file.fd)
                self._file.fd = -1
                self._file = None
            elif self._field is not None:
                name, value = self._field
                self._fields[name] = value.decode("utf-8", "surrogateescape")
                self._field = None

    def _stage(self, filename: str | None) -> _Staged:
        # Stage where the file will most likely end up, so the final rename
        # stays within one file system: the target's directory, or its
        # nearest existing ancestor (parents are made only at the end, once
        # the target is certain).
        with users.acting_as(self._user):
            try:
                hint = upload_target(self._path_param(), filename, self._user.home, os.path.isdir)
            except FsError:  # no target known yet: finish() says so if it stays that way
                hint = posixpath.join(self._user.home or "/", "upload")
            directory = _nearest_directory(posixpath.dirname(hint))
            for _ in range(16):
                temp = posixpath.join(directory, _TEMP_PREFIX + os.urandom(8).hex())
                try:
                    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                    break
                except FileExistsError:
                    continue
                except OSError as exc:
                    raise from_os_error(exc, "create", hint) from None
            else:
                raise FsError("internal", f"cannot create a temporary file in {directory}")
        staged = _Staged(filename, temp, fd)
        self._staged.append(staged)
        return staged

    def _write(self, staged: _Staged, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(staged.fd, view) :]
        except OSError as exc:
            raise from_os_error(exc, "write", staged.filename or staged.temp) from None

    def finish(self) -> list[dict[str, str]]:
        """Move every staged file to its target; what was written, for the reply."""
        if not self._staged:
            raise FsError("invalid_argument", "the upload has no file part")
        home = self._user.home
        written: list[dict[str, str]] = []
        with users.acting_as(self._user):
            targets = [upload_target(self._path_param(), s.filename, home, os.path.isdir) for s in self._staged]
            if len(set(targets)) < len(targets):
                raise FsError("invalid_argument", "several files of the upload go to the same path")
            for staged, target in zip(self._staged, targets):
                _put_in_place(staged.temp, target)
                staged.temp = ""
                written.append(
                    {"name": wire_text(posixpath.basename(target)), "type": "file", "path": wire_text(target)}
                )
        return written

    def discard(self) -> None:
        """Remove what was staged and not put in place (the upload failed)."""
        with users.acting_as(self._user):
            for staged in self._staged:
                if staged.fd >= 0:
                    os.close(staged.fd)
                    staged.fd = -1
                if staged.temp:
                    with contextlib.suppress(OSError):
                        os.unlink(staged.temp)
                    staged.temp = ""


def _nearest_directory(path: str) -> str:
    while not os.path.isdir(path) and path != "/":
        path = posixpath.dirname(path)
    return path


def _put_in_place(temp: str, target: str) -> None:
    if os.path.islink(target):
        # Writing to a symlink writes to what it points to, as open(2) would;
        # a rename would replace the link itself.
        target = os.path.realpath(target)
    parent = posixpath.dirname(target)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise from_os_error(exc, "mkdir", parent) from None
    try:
        existing = os.stat(target)
    except OSError:
        existing = None
    if existing is not None and stat.S_ISDIR(existing.st_mode):
        raise FsError("invalid_argument", f"cannot write {target}: it is a directory")
    # An overwritten file keeps its permissions (a script stays executable);
    # a new one gets what open(2) would give it under the usual umask.
    mode = stat.S_IMODE(existing.st_mode) if existing is not None else 0o644
    try:
        os.chmod(temp, mode)
        os.rename(temp, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise from_os_error(exc, "write", target) from None
        _copy_across(temp, target, mode)


def _copy_across(temp: str, target: str, mode: int) -> None:
    # The staging directory was on another file system: copy next to the
    # target, then rename there, so the target still appears in one step.
    second = posixpath.join(posixpath.dirname(target), _TEMP_PREFIX + os.urandom(8).hex())
    try:
        with open(temp, "rb") as src, open(second, "xb") as dst:
            while True:
                data = src.read(CHUNK)
                if not data:
                    break
                dst.write(data)
        os.chmod(second, mode)
        os.rename(second, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(second)
        raise from_os_error(exc, "write", target) from None
    os.unlink(temp)
