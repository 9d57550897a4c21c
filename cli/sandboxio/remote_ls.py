"""A directory listing run *inside* a sandbox, for the API path (which has no ListDir of its own).

`api.ApiBackend.list_dir` sends this file's source to `python3 -c` through the
API's exec stream: every sandbox has a python3 (its agent runs on it). It
prints one JSON object shaped like the agent's ListDirResponse, so the same
decoder reads both paths, or `{"error": {"code", "message"}}` and exits 1.
It mirrors agent/fs/entries.py: lstat for what the entry is, the target's type
and mode for a symlink, depth first by name, symlinks never descended into.

It must run on the sandbox's own Python (3.9 or newer) with the standard library only.

    python3 -c <this source> PATH DEPTH
"""

from __future__ import annotations

import errno
import grp
import json
import os
import pwd
import stat
import sys
import time
from typing import Any

_CODES = {errno.ENOENT: "not_found", errno.ENOTDIR: "not_found", errno.EACCES: "permission_denied"}


def resolve(path: str, home: str) -> str:
    # As the agent resolves paths: relative to the user's home, "~" expanded.
    if path == "~" or path.startswith("~/"):
        path = home + path[1:]
    elif not path.startswith("/"):
        path = os.path.join(home, path)
    return os.path.normpath(path)


def _name(lookup: Any, number: int) -> str:
    try:
        return str(lookup(number)[0])
    except (KeyError, OverflowError):
        return str(number)


def entry(path: str, lst: os.stat_result) -> dict[str, Any]:
    target: os.stat_result | None = lst
    link = stat.S_ISLNK(lst.st_mode)
    if link:
        try:
            target = os.stat(path)
        except OSError:
            target = None
    kind = 0
    if target is not None:
        kind = 2 if stat.S_ISDIR(target.st_mode) else 1 if stat.S_ISREG(target.st_mode) else 0
    out: dict[str, Any] = {
        "name": os.path.basename(path) or "/",
        "type": kind,
        "path": path,
        "size": str(lst.st_size),
        "mode": stat.S_IMODE(target.st_mode) & 0o777 if target is not None else 0,
        "permissions": stat.filemode(lst.st_mode),
        "owner": _name(pwd.getpwuid, lst.st_uid),
        "group": _name(grp.getgrgid, lst.st_gid),
        "modifiedTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(lst.st_mtime)),
    }
    if link:
        out["symlinkTarget"] = os.path.realpath(path)
    return out


def walk(directory: str, level: int, depth: int, out: list[dict[str, Any]]) -> None:
    try:
        with os.scandir(directory) as it:
            items = sorted(it, key=lambda item: item.name)
    except OSError:
        if level == 1:
            raise
        return  # an unreadable subdirectory: list everything else, as find(1) does
    for item in items:
        try:
            lst = item.stat(follow_symlinks=False)
        except OSError:  # gone since the directory was read
            continue
        out.append(entry(item.path, lst))
        if level < depth and stat.S_ISDIR(lst.st_mode):
            walk(item.path, level + 1, depth, out)


def main(argv: list[str]) -> int:
    root = resolve(argv[1], os.path.expanduser("~"))
    try:
        if not stat.S_ISDIR(os.stat(root).st_mode):
            error = {"code": "invalid_argument", "message": f"path is not a directory: {root}"}
            print(json.dumps({"error": error}))
            return 1
        entries: list[dict[str, Any]] = []
        walk(root, 1, max(int(argv[2]), 1), entries)
    except OSError as exc:
        reason = (exc.strerror or "error").lower()
        error = {"code": _CODES.get(exc.errno or 0, "internal"), "message": f"open {root}: {reason}"}
        print(json.dumps({"error": error}))
        return 1
    print(json.dumps({"entries": entries}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
