"""What the Filesystem service says about a path: ``Entry``, built from stat results.

``build_entry`` is pure (stat results and names in, an Entry out); the
functions below it do the system calls, as whichever user is in effect.
"""

from __future__ import annotations

import grp
import os
import posixpath
import pwd
import stat
from collections.abc import Iterator
from typing import Callable, NamedTuple

from agent.fs.errors import FsError, from_os_error
from agent.fs.paths import wire_text

# The values of the protocol's FileType enum.
TYPE_UNSPECIFIED = 0
TYPE_FILE = 1
TYPE_DIRECTORY = 2

# A recursive listing is answered in one message, held in memory until sent.
MAX_LIST_ENTRIES = 100_000


class Entry(NamedTuple):
    name: str
    type: int
    path: str
    size: int
    mode: int  # permission bits, of the target for a symlink
    permissions: str  # as ls(1) shows it: "-rw-r--r--", "lrwxrwxrwx"
    owner: str
    group: str
    mtime_ns: int
    symlink_target: str | None  # fully resolved; None unless the path is a symlink


def file_type(mode: int) -> int:
    """FILE or DIRECTORY; anything else (device, fifo, socket) has no protocol type."""
    if stat.S_ISDIR(mode):
        return TYPE_DIRECTORY
    if stat.S_ISREG(mode):
        return TYPE_FILE
    return TYPE_UNSPECIFIED


def permissions(mode: int) -> str:
    return stat.filemode(mode)


class Names:
    """uid and gid to names, memoised for one operation: a listing repeats a few owners.

    Not kept longer: users may be added inside the sandbox at any time.
    """

    def __init__(
        self,
        user: Callable[[int], str] = lambda uid: pwd.getpwuid(uid).pw_name,
        group: Callable[[int], str] = lambda gid: grp.getgrgid(gid).gr_name,
    ) -> None:
        self._lookup_user = user
        self._lookup_group = group
        self._users: dict[int, str] = {}
        self._groups: dict[int, str] = {}

    def user(self, uid: int) -> str:
        if uid not in self._users:
            self._users[uid] = _name_or_number(self._lookup_user, uid)
        return self._users[uid]

    def group(self, gid: int) -> str:
        if gid not in self._groups:
            self._groups[gid] = _name_or_number(self._lookup_group, gid)
        return self._groups[gid]


def _name_or_number(lookup: Callable[[int], str], number: int) -> str:
    try:
        return lookup(number)
    except (KeyError, OverflowError):  # no such entry: show the number, as ls(1) does
        return str(number)


def build_entry(
    path: str,
    lst: os.stat_result,
    names: Names,
    target: os.stat_result | None = None,
    target_path: str | None = None,
) -> Entry:
    """The entry for ``path`` from its lstat(); for a symlink, ``target`` is the
    stat() of what it points to (None when dangling) and ``target_path`` where."""
    is_link = stat.S_ISLNK(lst.st_mode)
    if is_link:
        kind = file_type(target.st_mode) if target is not None else TYPE_UNSPECIFIED
        mode = stat.S_IMODE(target.st_mode) & 0o777 if target is not None else 0
    else:
        kind = file_type(lst.st_mode)
        mode = stat.S_IMODE(lst.st_mode) & 0o777
    return Entry(
        name=wire_text(posixpath.basename(path) or "/"),
        type=kind,
        path=wire_text(path),
        size=lst.st_size,
        mode=mode,
        permissions=permissions(lst.st_mode),
        owner=wire_text(names.user(lst.st_uid)),
        group=wire_text(names.group(lst.st_gid)),
        mtime_ns=lst.st_mtime_ns,
        symlink_target=wire_text(target_path or "") if is_link else None,
    )


def entry_from_lstat(path: str, lst: os.stat_result, names: Names) -> Entry:
    """``build_entry`` after following ``path`` when it is a symlink."""
    if not stat.S_ISLNK(lst.st_mode):
        return build_entry(path, lst, names)
    target_path = os.path.realpath(path)
    try:
        target: os.stat_result | None = os.stat(path)
    except OSError:  # dangling, looping or unreadable: still an entry, of no type
        target = None
    return build_entry(path, lst, names, target, target_path)


def stat_entry(path: str, names: Names, op: str = "stat") -> Entry:
    try:
        lst = os.lstat(path)
    except OSError as exc:
        raise from_os_error(exc, op, path) from None
    return entry_from_lstat(path, lst, names)


def list_dir(root: str, depth: int, names: Names, limit: int = MAX_LIST_ENTRIES) -> list[Entry]:
    """Entries under ``root`` down to ``depth`` levels (1: its children), depth
    first, by name. Symlinks are listed, never descended into (no loops)."""
    try:
        root_stat = os.stat(root)
    except OSError as exc:
        raise from_os_error(exc, "stat", root) from None
    if not stat.S_ISDIR(root_stat.st_mode):
        raise FsError("invalid_argument", f"path is not a directory: {root}")
    depth = max(depth, 1)
    entries: list[Entry] = []
    stack: list[Iterator[os.DirEntry[str]]] = [iter(_read_dir(root, required=True))]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        try:
            lst = item.stat(follow_symlinks=False)
        except OSError:  # gone since the directory was read
            continue
        entries.append(entry_from_lstat(item.path, lst, names))
        if len(entries) > limit:
            raise FsError(
                "resource_exhausted",
                f"listing {root} gives more than {limit} entries: ask for a smaller depth",
            )
        if len(stack) < depth and stat.S_ISDIR(lst.st_mode):
            stack.append(iter(_read_dir(item.path, required=False)))
    return entries


def _read_dir(path: str, required: bool) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as exc:
        if required:
            raise from_os_error(exc, "open", path) from None
        # An unreadable subdirectory: list everything else, as find(1) does.
        return []
