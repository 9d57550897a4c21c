"""The file layer's one error type, and where OS errors become it.

    FsError(code, message)      a Connect code and a message for the client
      .http_status              the status the file endpoints answer with

``from_os_error`` is the single place where an ``OSError`` is translated. The
SDKs read the *messages*: a missing path must say "no such file or
directory" (Python's ``exists()``) and "not found" (JavaScript's).
"""

from __future__ import annotations

import errno

HTTP_STATUS = {
    "invalid_argument": 400,
    "failed_precondition": 400,
    "permission_denied": 403,
    "not_found": 404,
    "already_exists": 409,
    "resource_exhausted": 507,  # the Python SDK turns 507 into NotEnoughSpaceException
    "unimplemented": 501,
    "internal": 500,
}

# errno -> (Connect code, message tail)
_ERRNO = {
    errno.ENOENT: ("not_found", "no such file or directory"),
    errno.EACCES: ("permission_denied", "permission denied"),
    errno.EPERM: ("permission_denied", "operation not permitted"),
    errno.EROFS: ("permission_denied", "read-only file system"),
    errno.EEXIST: ("already_exists", "file exists"),
    errno.ENOTEMPTY: ("failed_precondition", "directory not empty"),
    errno.EISDIR: ("invalid_argument", "is a directory"),
    errno.EINVAL: ("invalid_argument", "invalid argument"),
    errno.ENAMETOOLONG: ("invalid_argument", "file name too long"),
    errno.ELOOP: ("invalid_argument", "too many levels of symbolic links"),
    errno.EBUSY: ("failed_precondition", "device or resource busy"),
    errno.ENOSPC: ("resource_exhausted", "no space left on device"),
    errno.EDQUOT: ("resource_exhausted", "disk quota exceeded"),
    errno.EMFILE: ("resource_exhausted", "too many open files"),
}


class FsError(Exception):
    """A failure to report to the client as ``code`` with ``message``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)


def from_os_error(exc: OSError, op: str, path: str) -> FsError:
    """``exc``, raised by ``op`` (a verb: "stat", "open", ...) on ``path``, for the client."""
    number = exc.errno or 0
    if number == errno.ENOTDIR:
        # A file where a directory was expected on the way: the path does not
        # exist, and exists() must say so rather than fail.
        return FsError("not_found", f"path not found: {op} {path}: not a directory (no such file or directory)")
    code, tail = _ERRNO.get(number, ("internal", exc.strerror or str(exc)))
    if code == "not_found":
        return FsError(code, f"path not found: {op} {path}: {tail}")
    return FsError(code, f"{op} {path}: {tail}")
