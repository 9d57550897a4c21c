"""The Filesystem service's operations as plain functions: absolute paths in,
``Entry`` values out, ``FsError`` for anything the client should hear about.

They make system calls as whoever the process is at the time; the service
runs each inside ``users.acting_as`` so that the user's permissions apply.
"""

from __future__ import annotations

import errno
import os
import stat

from agent.fs.entries import Entry, Names, stat_entry
from agent.fs.errors import FsError, from_os_error


def make_dir(path: str) -> Entry:
    """Create ``path`` and its missing parents (mkdir -p, honouring the umask)."""
    try:
        os.makedirs(path)
    except FileExistsError:
        if os.path.isdir(path):
            # The SDKs look for exactly this phrase: make_dir() then returns False.
            raise FsError("already_exists", f"directory already exists: {path}") from None
        raise FsError("already_exists", f"path already exists and is not a directory: {path}") from None
    except OSError as exc:
        raise from_os_error(exc, "mkdir", path) from None
    return stat_entry(path, Names())


def move(source: str, destination: str) -> Entry:
    """rename(2) ``source`` to ``destination``, creating the destination's parents."""
    try:
        os.lstat(source)
    except OSError as exc:
        raise from_os_error(exc, "rename", source) from None
    parent = os.path.dirname(destination)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise from_os_error(exc, "mkdir", parent) from None
    try:
        os.rename(source, destination)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise from_os_error(exc, "rename", f"{source} to {destination}") from None
        _move_across_devices(source, destination)
    return stat_entry(destination, Names())


def _move_across_devices(source: str, destination: str) -> None:
    # rename(2) cannot cross file systems: copy, then delete, as mv(1) does.
    # shutil.move would put the source *inside* an existing destination directory.
    if os.path.lexists(destination):
        raise FsError("already_exists", f"rename {source} to {destination}: destination exists on another file system")
    import shutil  # here: it loads bz2, lzma and zlib, a few hundred kB every sandbox would pay for

    try:
        shutil.move(source, destination)
    except OSError as exc:
        raise from_os_error(exc, "move", getattr(exc, "filename", None) or source) from None


def remove(path: str) -> None:
    """Remove a file, symlink or whole directory tree."""
    if path == "/":
        raise FsError("invalid_argument", "refusing to remove /")
    try:
        mode = os.lstat(path).st_mode
    except OSError as exc:
        raise from_os_error(exc, "remove", path) from None
    try:
        if stat.S_ISDIR(mode):
            import shutil  # here: see _move_across_devices

            shutil.rmtree(path)
        else:
            os.unlink(path)
    except OSError as exc:
        raise from_os_error(exc, "remove", getattr(exc, "filename", None) or path) from None
