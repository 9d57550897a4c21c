"""Request paths to absolute paths, and file names to text the wire can carry.

Both SDKs pass paths as the user typed them: absolute, relative (to the
selected user's home, as a login shell would see them), or ``~``-prefixed.
"""

from __future__ import annotations

import posixpath
from typing import Callable

from agent.fs.errors import FsError


def resolve(path: str, home: str) -> str:
    """The absolute, normalised form of ``path`` for a user whose home is ``home``.

    ``..`` is folded lexically: that is no escape hatch, since every operation
    then runs with the user's own permissions.
    """
    if "\x00" in path:
        raise FsError("invalid_argument", "invalid path: it contains a NUL byte")
    home = home or "/"
    if path == "~" or path.startswith("~/"):
        path = home + path[1:]
    elif not path.startswith("/"):
        path = posixpath.join(home, path)
    path = posixpath.normpath(path)
    # POSIX lets normpath keep exactly two leading slashes; the kernel does not care.
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    return path


def wire_text(text: str) -> str:
    """``text`` with undecodable file-name bytes replaced, so it encodes as UTF-8.

    File names are bytes; Python maps the bytes that are not UTF-8 to lone
    surrogates, which a protobuf string or a JSON document cannot carry.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # surrogates that did not come from file-name bytes
        raw = text.encode("utf-8", "replace")
    return raw.decode("utf-8", "replace")


def download_candidates(requested: str, home: str) -> list[str]:
    """Where ``/download/<requested>`` may point, in order.

    The SDKs strip the path's leading "/" before putting it in the URL, so
    absolute comes first; a relative path (what an upload of the same path
    wrote, under the home directory) is the fallback.
    """
    first = resolve("/" + requested, home) if not requested.startswith("~") else resolve(requested, home)
    second = resolve(requested, home)
    return [first] if second == first else [first, second]


def upload_target(
    path_param: str | None,
    filename: str | None,
    home: str,
    is_dir: Callable[[str], bool],
) -> str:
    """The absolute path a file part named ``filename`` is written to.

    ``path_param`` (the upload's ``path``) names the file, or, when it is an
    existing directory or ends in "/", the directory to put it in under its
    own name; without it the file name is the path (both SDKs send the path
    there too). ``is_dir`` is ``os.path.isdir``, passed in to keep this pure.
    """
    if path_param:
        target = resolve(path_param, home)
        if not (path_param.endswith("/") or is_dir(target)):
            return target
        name = posixpath.basename(filename or "")
        if name in ("", ".", ".."):
            raise FsError("invalid_argument", f"{target} is a directory and the file part has no file name")
        return resolve(name, target)
    if filename:
        return resolve(filename, home)
    raise FsError("invalid_argument", "no path for the file: give a path field or a file name")
