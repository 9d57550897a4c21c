"""The ``sandboxagent.Filesystem`` Connect service.

Each handler resolves its paths against the selected user's home, runs the
operation (``ops``, ``entries``) inside ``users.acting_as(ctx.user)`` so the
user's permissions apply, and turns the result into messages. ``FsError``
becomes a ``ConnectError`` in one place: the wrappers ``_unary`` and
``_stream``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Callable, TypeVar

from agent import proto, users
from agent.connect import ConnectError, Registry, RpcContext, keepalive_interval
from agent.fs import entries, ops
from agent.fs.entries import Entry, Names
from agent.fs.errors import FsError
from agent.fs.paths import resolve, wire_text
from agent.fs.watch import Watcher, WatcherTable
from agent.proto.timestamp import MAX_SECONDS, MIN_SECONDS

SERVICE = "sandboxagent.Filesystem"

T = TypeVar("T")


def entry_info(entry: Entry) -> proto.EntryInfo:
    # A timestamp outside what protobuf's JSON form allows cannot be sent: clamp.
    mtime_ns = min(max(entry.mtime_ns, MIN_SECONDS * 10**9), MAX_SECONDS * 10**9)
    return proto.EntryInfo(
        name=entry.name,
        type=proto.FileType(entry.type),
        path=entry.path,
        size=entry.size,
        mode=entry.mode,
        permissions=entry.permissions,
        owner=entry.owner,
        group=entry.group,
        modified_time=proto.Timestamp.from_ns(mtime_ns),
        symlink_target=entry.symlink_target,
    )


def _as_user(ctx: RpcContext, operation: Callable[..., T], *args: Any) -> T:
    with users.acting_as(ctx.user):
        return operation(*args)


def _path(ctx: RpcContext, path: str, required: bool = False) -> str:
    if required and not path:
        # An empty path means the home directory: never what a Remove or Move means.
        raise FsError("invalid_argument", "a path is required")
    return resolve(path, ctx.user.home)


class FilesystemService:
    def __init__(self, watchers: WatcherTable) -> None:
        self.watchers = watchers

    async def stat(self, request: proto.StatRequest, ctx: RpcContext) -> proto.StatResponse:
        path = _path(ctx, request.path)
        entry = _as_user(ctx, entries.stat_entry, path, Names())
        return proto.StatResponse(entry=entry_info(entry))

    async def make_dir(self, request: proto.MakeDirRequest, ctx: RpcContext) -> proto.MakeDirResponse:
        path = _path(ctx, request.path, required=True)
        return proto.MakeDirResponse(entry=entry_info(_as_user(ctx, ops.make_dir, path)))

    async def move(self, request: proto.MoveRequest, ctx: RpcContext) -> proto.MoveResponse:
        source = _path(ctx, request.source, required=True)
        destination = _path(ctx, request.destination, required=True)
        return proto.MoveResponse(entry=entry_info(_as_user(ctx, ops.move, source, destination)))

    async def list_dir(self, request: proto.ListDirRequest, ctx: RpcContext) -> proto.ListDirResponse:
        path = _path(ctx, request.path)
        found = _as_user(ctx, entries.list_dir, path, request.depth or 1, Names())
        return proto.ListDirResponse(entries=[entry_info(entry) for entry in found])

    async def remove(self, request: proto.RemoveRequest, ctx: RpcContext) -> proto.RemoveResponse:
        _as_user(ctx, ops.remove, _path(ctx, request.path, required=True))
        return proto.RemoveResponse()

    async def watch_dir(self, request: proto.WatchDirRequest, ctx: RpcContext) -> AsyncIterator[proto.WatchDirResponse]:
        # Connect-Timeout-Ms is enforced by the framework, which cancels this
        # generator: the finally below still closes the watch.
        watcher = self._start_watcher(request.path, request.recursive, ctx)
        closed = asyncio.get_running_loop().create_task(ctx.closed.wait())
        try:
            yield proto.WatchDirResponse(start=proto.WatchDirResponse.StartEvent())
            interval = keepalive_interval(ctx)
            while True:
                for name, kind in watcher.take():
                    event = proto.FilesystemEvent(name=wire_text(name), type=proto.EventType(kind))
                    yield proto.WatchDirResponse(filesystem=event)
                if watcher.gone:  # the directory was removed: nothing more will happen in it
                    return
                changed = asyncio.ensure_future(watcher.changed.wait())
                try:
                    done, _ = await asyncio.wait(
                        {changed, closed}, timeout=interval, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    changed.cancel()
                if closed.done():
                    return
                if not done:  # quiet for a whole interval: tell proxies and the client we are alive
                    yield proto.WatchDirResponse(keepalive=proto.WatchDirResponse.KeepAlive())
        finally:
            closed.cancel()
            watcher.close()

    async def create_watcher(self, request: proto.CreateWatcherRequest, ctx: RpcContext) -> proto.CreateWatcherResponse:
        watcher = self._start_watcher(request.path, request.recursive, ctx)
        return proto.CreateWatcherResponse(watcher_id=self.watchers.add(watcher))

    async def get_watcher_events(
        self, request: proto.GetWatcherEventsRequest, ctx: RpcContext
    ) -> proto.GetWatcherEventsResponse:
        events = self.watchers.get(request.watcher_id).take()
        return proto.GetWatcherEventsResponse(
            events=[proto.FilesystemEvent(name=wire_text(name), type=proto.EventType(kind)) for name, kind in events]
        )

    async def remove_watcher(self, request: proto.RemoveWatcherRequest, ctx: RpcContext) -> proto.RemoveWatcherResponse:
        self.watchers.remove(request.watcher_id)
        return proto.RemoveWatcherResponse()

    def _start_watcher(self, path: str, recursive: bool, ctx: RpcContext) -> Watcher:
        user = ctx.user
        watcher = Watcher(_path(ctx, path), recursive, lambda: users.acting_as(user))
        watcher.start()
        return watcher

    def register(self, registry: Registry) -> None:
        unary = (
            ("Stat", proto.StatRequest, proto.StatResponse, self.stat),
            ("MakeDir", proto.MakeDirRequest, proto.MakeDirResponse, self.make_dir),
            ("Move", proto.MoveRequest, proto.MoveResponse, self.move),
            ("ListDir", proto.ListDirRequest, proto.ListDirResponse, self.list_dir),
            ("Remove", proto.RemoveRequest, proto.RemoveResponse, self.remove),
            ("CreateWatcher", proto.CreateWatcherRequest, proto.CreateWatcherResponse, self.create_watcher),
            (
                "GetWatcherEvents",
                proto.GetWatcherEventsRequest,
                proto.GetWatcherEventsResponse,
                self.get_watcher_events,
            ),
            ("RemoveWatcher", proto.RemoveWatcherRequest, proto.RemoveWatcherResponse, self.remove_watcher),
        )
        for method, request_type, response_type, handler in unary:
            registry.unary(SERVICE, method, request_type, response_type)(_unary(handler))
        registry.server_stream(SERVICE, "WatchDir", proto.WatchDirRequest, proto.WatchDirResponse)(
            _stream(self.watch_dir)
        )


def _unary(handler: Callable[[Any, RpcContext], Awaitable[T]]) -> Callable[[Any, RpcContext], Awaitable[T]]:
    async def call(request: Any, ctx: RpcContext) -> T:
        try:
            return await handler(request, ctx)
        except FsError as exc:
            raise ConnectError(exc.code, exc.message) from None

    return call


def _stream(handler: Callable[[Any, RpcContext], AsyncIterator[T]]) -> Callable[[Any, RpcContext], AsyncIterator[T]]:
    async def call(request: Any, ctx: RpcContext) -> AsyncIterator[T]:
        messages = handler(request, ctx)
        try:
            async for message in messages:
                yield message
        except FsError as exc:
            raise ConnectError(exc.code, exc.message) from None
        finally:
            await messages.aclose()  # type: ignore[attr-defined]  # its finally closes the watch now

    return call
