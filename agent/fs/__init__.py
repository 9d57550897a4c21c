"""Files: the ``sandboxagent.Filesystem`` service, directory watching, and file
content over plain HTTP (``GET /download/<path>``, ``POST /upload``).

    paths.py      request paths -> absolute paths (home, ``~``); wire-safe names
    errors.py     FsError, and the one translation of OSError into it
    entries.py    stat results -> Entry (name, type, mode, owner, ...); listings
    ops.py        make_dir, move, remove
    multipart.py  incremental multipart/form-data parser (pure)
    inotify.py    inotify(7) through ctypes; the event record parser (pure)
    watch.py      watch bookkeeping (pure) and the asyncio watcher
    service.py    the Connect handlers
    transfer.py   the download and upload handlers

Every operation runs as the request's user (``users.acting_as``), so the
kernel applies that user's permissions.
"""

from __future__ import annotations

from agent.auth import DOWNLOAD, PUBLIC, UPLOAD
from agent.connect import Registry
from agent.fs import transfer
from agent.fs.service import SERVICE, FilesystemService
from agent.fs.watch import WatcherTable
from agent.http import Routes

# The Python SDK's WatchHandle calls these two without any header (no access
# token), so they cannot require one. The watcher id they name is a 128-bit
# random capability, handed out only by an authenticated CreateWatcher.
CAPABILITY_PROCEDURES = ("GetWatcherEvents", "RemoveWatcher")


def install(registry: Registry, routes: Routes) -> None:
    """Register the Filesystem service on ``registry`` and the file routes on ``routes``."""
    FilesystemService(WatcherTable()).register(registry)
    for method in CAPABILITY_PROCEDURES:
        # An exact route wins over the registry's pattern route (which needs the token).
        routes.add("POST", f"/{SERVICE}/{method}", registry.handle, auth=PUBLIC, errors=registry.render_http_error)
    routes.add_prefix("GET", transfer.DOWNLOAD_PREFIX, transfer.download, auth=DOWNLOAD)
    routes.add("POST", "/upload", transfer.upload, auth=UPLOAD)
