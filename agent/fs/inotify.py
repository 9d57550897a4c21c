"""Linux inotify(7) through ctypes: the three system calls, and ``parse_events``,
a pure function over the bytes that read(2) returns from an inotify descriptor.

ctypes is loaded on first use only: it costs memory, and a minimal Python
install may lack it, in which case watching reports ``unimplemented`` and
everything else still works.
"""

from __future__ import annotations

import os
import struct
from typing import Any, NamedTuple

from agent.fs.errors import FsError

IN_ACCESS = 0x00000001
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000

# inotify_init1 flags are defined as the matching open(2) flags.
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

# struct inotify_event { int wd; uint32_t mask, cookie, len; char name[len]; }
_HEADER = struct.Struct("=iIII")
_READ_SIZE = 64 * 1024  # many events per read(); at least one (16 + NAME_MAX + 1)
_READS_PER_WAKEUP = 16  # then let the loop run others; the fd stays readable


class RawEvent(NamedTuple):
    wd: int
    mask: int
    cookie: int
    name: bytes  # relative to the watched directory; b"" for the directory itself


def parse_events(data: bytes) -> list[RawEvent]:
    """The events in ``data``, which holds whole records (the kernel never splits one)."""
    events = []
    offset, end = 0, len(data)
    while offset < end:
        if end - offset < _HEADER.size:
            raise ValueError("truncated inotify event header")
        wd, mask, cookie, length = _HEADER.unpack_from(data, offset)
        offset += _HEADER.size
        if end - offset < length:
            raise ValueError("truncated inotify event name")
        # The name is NUL-terminated and padded with NULs to an alignment.
        name = data[offset : offset + length].split(b"\0", 1)[0]
        offset += length
        events.append(RawEvent(wd, mask, cookie, name))
    return events


_libc: Any | None = None


def _load() -> Any:
    global _libc
    if _libc is None:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.inotify_init1.argtypes = [ctypes.c_int]
            libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
            libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        except (ImportError, OSError, AttributeError) as exc:
            raise FsError("unimplemented", f"file watching is not available here: {exc}") from None
        _libc = libc
    return _libc


def _errno() -> int:
    import ctypes

    return ctypes.get_errno()


class Inotify:
    """One non-blocking inotify descriptor and the watches added through it."""

    def __init__(self) -> None:
        libc = _load()
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            number = _errno()
            raise OSError(number, os.strerror(number), "inotify_init1")
        self._libc = libc
        self.fd = fd

    def add_watch(self, path: str, mask: int) -> int:
        """The watch descriptor for ``path``; OSError as the system call failed.

        Permission to read the directory is checked for the current effective
        user, so call this as the user the watch is for.
        """
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            number = _errno()
            raise OSError(number, os.strerror(number), path)
        return int(wd)

    def rm_watch(self, wd: int) -> None:
        # Failure means the kernel dropped the watch already (its directory is gone).
        self._libc.inotify_rm_watch(self.fd, wd)

    def read_events(self) -> list[RawEvent]:
        """What is queued now, without blocking."""
        events: list[RawEvent] = []
        for _ in range(_READS_PER_WAKEUP):
            try:
                data = os.read(self.fd, _READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                break
            events.extend(parse_events(data))
        return events

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # drops every watch with it
            self.fd = -1
