"""Directory watching: inotify events become the protocol's filesystem events.

    event_type(mask)      pure: inotify mask -> EventType value (or None)
    WatchTable            pure: watch descriptors <-> paths relative to the
                          watched root; interprets raw events
    Watcher               the asyncio shell: one inotify descriptor read with
                          ``loop.add_reader``, a bounded buffer of events,
                          recursive watches kept up to date
    WatcherTable          the polling watchers of CreateWatcher, by id

Event names are relative to the watched directory ("sub/file.txt"). Mapping
follows fsnotify (what other sandbox agents use): a file moved in is a CREATE
of its new name, one moved out or renamed a RENAME of its old name.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import os
import posixpath
from contextlib import AbstractContextManager
from typing import Callable, NamedTuple

from agent import log
from agent.fs import inotify
from agent.fs.errors import FsError, from_os_error
from agent.fs.inotify import RawEvent

# The values of the protocol's EventType enum.
EVENT_CREATE = 1
EVENT_WRITE = 2
EVENT_REMOVE = 3
EVENT_RENAME = 4
EVENT_CHMOD = 5

# IN_EXCL_UNLINK: no events about files already unlinked but still open.
WATCH_MASK = (
    inotify.IN_CREATE
    | inotify.IN_MODIFY
    | inotify.IN_ATTRIB
    | inotify.IN_DELETE
    | inotify.IN_MOVED_FROM
    | inotify.IN_MOVED_TO
    | inotify.IN_DELETE_SELF
    | inotify.IN_MOVE_SELF
    | inotify.IN_ONLYDIR
    | inotify.IN_EXCL_UNLINK
)
# Subdirectories are found by name: never follow a symlink swapped in meanwhile.
SUBDIR_MASK = WATCH_MASK | inotify.IN_DONT_FOLLOW

MAX_WATCHES = 8192  # directories per recursive watcher (all that older kernels allow a user by default)
MAX_EVENTS = 4096  # buffered per watcher; the oldest go first
MAX_WATCHERS = 64  # polling watchers; each holds an inotify descriptor (the kernel allows 128 per user)

Event = tuple[str, int]  # (name relative to the root, EventType value)


def event_type(mask: int) -> int | None:
    if mask & (inotify.IN_CREATE | inotify.IN_MOVED_TO):
        return EVENT_CREATE
    if mask & inotify.IN_MOVED_FROM:
        return EVENT_RENAME
    if mask & inotify.IN_DELETE:
        return EVENT_REMOVE
    if mask & inotify.IN_MODIFY:
        return EVENT_WRITE
    if mask & inotify.IN_ATTRIB:
        return EVENT_CHMOD
    return None


class Interpretation(NamedTuple):
    events: list[Event]
    descend: str | None  # a directory that appeared: watch it (and what is in it)
    fresh: bool  # it was just made (not moved in): what is already in it is new too
    drop: list[int]  # watches of a subtree that left: remove them
    root_gone: bool  # the watched directory itself was removed or moved


class WatchTable:
    """Which watch descriptor stands for which directory, relative to the root ("")."""

    def __init__(self, recursive: bool) -> None:
        self.recursive = recursive
        self.paths: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def added(self, wd: int, relative: str) -> None:
        self.paths[wd] = relative

    def interpret(self, raw: RawEvent) -> Interpretation:
        nothing = Interpretation([], None, False, [], False)
        relative = self.paths.get(raw.wd)
        if relative is None:  # a watch dropped already (or the queue-overflow event, wd -1)
            return nothing
        if raw.mask & inotify.IN_IGNORED:  # the kernel removed this watch
            del self.paths[raw.wd]
            return nothing._replace(root_gone=relative == "")
        if raw.mask & (inotify.IN_DELETE_SELF | inotify.IN_MOVE_SELF | inotify.IN_UNMOUNT):
            # A subdirectory's own removal is reported by its parent, by name.
            return nothing._replace(root_gone=relative == "")
        name = os.fsdecode(raw.name)
        if relative:
            name = relative + "/" + name
        kind = event_type(raw.mask)
        events = [(name, kind)] if kind is not None else []
        descend = None
        drop: list[int] = []
        if self.recursive and raw.mask & inotify.IN_ISDIR:
            if raw.mask & (inotify.IN_CREATE | inotify.IN_MOVED_TO):
                descend = name
            elif raw.mask & (inotify.IN_MOVED_FROM | inotify.IN_DELETE):
                # Its watches would report under a name that no longer holds;
                # if it moved within the tree, the MOVED_TO re-adds it.
                prefix = name + "/"
                drop = [wd for wd, path in self.paths.items() if path == name or path.startswith(prefix)]
                for wd in drop:
                    del self.paths[wd]
        fresh = descend is not None and bool(raw.mask & inotify.IN_CREATE)
        return Interpretation(events, descend, fresh, drop, False)


class Watcher:
    """Watches one directory (and, when recursive, those below it) for as long as it is open.

    ``as_user`` gives a context manager in which system calls run as the user
    the watch is for: only what that user may read is watched.
    """

    def __init__(
        self,
        root: str,
        recursive: bool,
        as_user: Callable[[], AbstractContextManager[object]],
        max_watches: int = MAX_WATCHES,
        max_events: int = MAX_EVENTS,
    ) -> None:
        self.root = root
        self.recursive = recursive
        self._as_user = as_user
        self._max_watches = max_watches
        self._table = WatchTable(recursive)
        self._events: collections.deque[Event] = collections.deque(maxlen=max_events)
        self._inotify: inotify.Inotify | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.changed = asyncio.Event()  # set when there are events to take, or the watch ended
        self.gone = False  # the root was removed or moved away: no more events will come
        self._limit_logged = False

    def start(self) -> None:
        """Add the watches (FsError when the root cannot be watched) and start reading."""
        if self._inotify is None:
            try:
                self._inotify = inotify.Inotify()
            except OSError as exc:
                raise _watch_error(exc, self.root) from None
        try:
            with self._as_user():
                try:
                    wd = self._inotify.add_watch(self.root, WATCH_MASK)
                except OSError as exc:
                    raise _watch_error(exc, self.root) from None
                self._table.added(wd, "")
                if self.recursive:
                    self._watch_below("", report=False, strict=True)
        except BaseException:
            self.close()
            raise
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._inotify.fd, self._on_readable)

    def take(self) -> list[Event]:
        """The events since the last call, oldest first."""
        events = list(self._events)
        self._events.clear()
        if not self.gone:
            self.changed.clear()
        return events

    def close(self) -> None:
        if self._inotify is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._inotify.fd)
            self._loop = None
        self._inotify.close()  # the kernel drops every watch with the descriptor
        self._inotify = None
        self._table.paths.clear()

    def _on_readable(self) -> None:
        assert self._inotify is not None
        try:
            raws = self._inotify.read_events()
        except (OSError, ValueError) as exc:  # not expected: stop rather than spin
            log.event("fs_watch_failed", path=self.root, error=str(exc))
            self._end()
            return
        try:
            with self._as_user():
                for raw in raws:
                    self._handle(raw)
                    if self.gone:  # closed by that event: the rest is moot
                        break
        except Exception as exc:  # a bug: end this watch, not the agent's loop
            log.event("fs_watch_failed", path=self.root, error=repr(exc))
            self._end()
        if self._events:
            self.changed.set()

    def _handle(self, raw: RawEvent) -> None:
        assert self._inotify is not None
        if raw.mask & inotify.IN_Q_OVERFLOW:
            log.event("fs_watch_overflow", path=self.root)
            return
        meaning = self._table.interpret(raw)
        for event in meaning.events:
            self._push(event)
        for wd in meaning.drop:
            self._inotify.rm_watch(wd)
        if meaning.descend is not None and self._add_subdir(meaning.descend):
            # What was made in a new directory before its watch was in place
            # has no event of its own (think ``mkdir -p a/b/c``): report what
            # is there now. A directory moved in brings old content: no events.
            self._watch_below(meaning.descend, report=meaning.fresh, strict=False)
        if meaning.root_gone:
            self._end()

    def _push(self, event: Event) -> None:
        # A large write is a burst of IN_MODIFY: one event says as much.
        if not self._events or self._events[-1] != event:
            self._events.append(event)

    def _end(self) -> None:
        self.gone = True
        self.close()
        self.changed.set()

    def _add_subdir(self, relative: str) -> bool:
        assert self._inotify is not None
        if len(self._table) >= self._max_watches:
            if not self._limit_logged:  # once: a tree that outgrew the limit keeps hitting it
                log.event("fs_watch_limit", path=self.root, limit=self._max_watches)
                self._limit_logged = True
            return False
        try:
            wd = self._inotify.add_watch(posixpath.join(self.root, relative), SUBDIR_MASK)
        except OSError:  # gone already, unreadable, or not a directory any more
            return False
        self._table.added(wd, relative)
        return True

    def _watch_below(self, relative: str, report: bool, strict: bool) -> None:
        """Watch every directory below ``relative``; with ``report``, queue a CREATE
        for every entry found. ``strict``: exceeding the watch limit is an error."""
        pending = [relative]
        while pending:
            current = pending.pop()
            try:
                with os.scandir(posixpath.join(self.root, current)) as it:
                    children = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
            except OSError:  # unreadable or gone: watch the rest
                continue
            for name, is_dir in sorted(children):
                child = posixpath.join(current, name) if current else name
                if report:
                    self._push((child, EVENT_CREATE))
                if not is_dir:
                    continue
                if strict and len(self._table) >= self._max_watches:
                    raise FsError(
                        "resource_exhausted",
                        f"{self.root} has more than {self._max_watches} directories to watch",
                    )
                if self._add_subdir(child):
                    pending.append(child)


def _watch_error(exc: OSError, path: str) -> FsError:
    if exc.errno == errno.ENOTDIR:
        return FsError("invalid_argument", f"path is not a directory: {path}")
    if exc.errno == errno.ENOSPC:  # what inotify_add_watch says at max_user_watches
        return FsError("resource_exhausted", f"watch {path}: the system's limit of inotify watches is reached")
    if exc.errno == errno.EMFILE:  # what inotify_init1 says at max_user_instances
        return FsError("resource_exhausted", f"watch {path}: the system's limit of inotify instances is reached")
    return from_os_error(exc, "watch", path)


class WatcherTable:
    """The polling watchers, by id, least recently used first.

    Clients need not remove their watchers (the SDK's handle may just be
    dropped), so the table is capped: a new watcher beyond the cap closes the
    one polled longest ago. Ids are 128 random bits, a capability: they are
    not tied to a user, since the Python SDK polls without naming one (nor
    its access token, see ``agent.fs.install``).
    """

    def __init__(self, max_watchers: int = MAX_WATCHERS) -> None:
        self._max = max_watchers
        self._watchers: collections.OrderedDict[str, Watcher] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._watchers)

    def add(self, watcher: Watcher) -> str:
        while len(self._watchers) >= self._max:
            _, oldest = self._watchers.popitem(last=False)
            oldest.close()
        watcher_id = os.urandom(16).hex()
        self._watchers[watcher_id] = watcher
        return watcher_id

    def get(self, watcher_id: str) -> Watcher:
        watcher = self._watchers.get(watcher_id)
        if watcher is None:
            raise FsError("not_found", f"watcher not found: {watcher_id!r}")
        self._watchers.move_to_end(watcher_id)
        return watcher

    def remove(self, watcher_id: str) -> None:
        self.get(watcher_id)
        self._watchers.pop(watcher_id).close()

    def close(self) -> None:
        while self._watchers:
            self._watchers.popitem()[1].close()
