"""The Filesystem service's handlers, called as the Connect framework calls them."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import fs, proto
from agent.connect import ConnectError, Registry, RpcContext
from agent.http import Routes

SERVICE = "/sandboxagent.Filesystem/"


class Agent:
    """The service installed on a registry, and calls to it with a fresh context each."""

    def __init__(self) -> None:
        self.registry = Registry()
        fs.install(self.registry, Routes())

    def handler(self, method: str) -> Callable[..., Any]:
        found = self.registry.method(SERVICE + method)
        assert found is not None
        return found.handler  # type: ignore[no-any-return]

    async def call(self, method: str, request: Any, user: str = "root", **headers: str) -> Any:
        return await self.handler(method)(request, context(method, user, headers))

    async def fail(self, method: str, request: Any, user: str = "root") -> ConnectError:
        with pytest.raises(ConnectError) as caught:
            await self.call(method, request, user)
        return caught.value


def context(method: str, user: str = "root", headers: dict[str, str] | None = None) -> RpcContext:
    return RpcContext(procedure=SERVICE + method, user_name=user, headers=headers or {})


def run(scenario: Callable[[Agent], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(scenario(Agent()), 20))


@pytest.fixture
def shared() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="agent-fs-", dir="/tmp"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_all_procedures_are_registered() -> None:
    assert [p for p in Agent().registry.procedures if p.startswith(SERVICE)] == [
        SERVICE + name
        for name in sorted(
            [
                "CreateWatcher",
                "GetWatcherEvents",
                "ListDir",
                "MakeDir",
                "Move",
                "Remove",
                "RemoveWatcher",
                "Stat",
                "WatchDir",
            ]
        )
    ]


def test_stat(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_bytes(b"12345")
    os.utime(tmp_path / "f.txt", ns=(1_700_000_000_500_000_000, 1_700_000_000_500_000_000))

    async def scenario(agent: Agent) -> proto.StatResponse:
        return await agent.call("Stat", proto.StatRequest(path=str(tmp_path / "f.txt")))

    entry = run(scenario).entry
    assert (entry.name, entry.type, entry.path, entry.size) == (
        "f.txt",
        proto.FileType.FILE_TYPE_FILE,
        str(tmp_path / "f.txt"),
        5,
    )
    assert (entry.owner, entry.group, entry.symlink_target) == ("root", "root", None)
    assert (entry.modified_time.seconds, entry.modified_time.nanos) == (1_700_000_000, 500_000_000)
    # Both codecs can carry it.
    assert proto.EntryInfo.decode(entry.encode()).path == entry.path
    assert entry.to_json()["modifiedTime"] == "2023-11-14T22:13:20.500Z"


def test_paths_are_relative_to_the_users_home() -> None:
    async def scenario(agent: Agent) -> list[str]:
        home = await agent.call("Stat", proto.StatRequest(path="~"))
        empty = await agent.call("Stat", proto.StatRequest(path=""))
        return [home.entry.path, empty.entry.path]

    assert run(scenario) == ["/root", "/root"]


def test_errors_carry_the_codes_and_messages_the_sdks_read(tmp_path: Path) -> None:
    async def scenario(agent: Agent) -> dict[str, ConnectError]:
        await agent.call("MakeDir", proto.MakeDirRequest(path=str(tmp_path / "d")))
        return {
            "missing": await agent.fail("Stat", proto.StatRequest(path=str(tmp_path / "missing"))),
            "exists": await agent.fail("MakeDir", proto.MakeDirRequest(path=str(tmp_path / "d"))),
            "user": await agent.fail("Stat", proto.StatRequest(path="/"), user="no-such-user"),
            "empty": await agent.fail("Remove", proto.RemoveRequest(path="")),
            "nul": await agent.fail("Stat", proto.StatRequest(path="a\x00b")),
        }

    errors = run(scenario)
    assert errors["missing"].code == "not_found"
    assert "no such file or directory" in errors["missing"].message
    assert "not found" in errors["missing"].message
    assert errors["exists"].code == "already_exists"
    assert "directory already exists" in errors["exists"].message
    assert errors["user"].code == "invalid_argument"
    assert "no-such-user" in errors["user"].message
    assert errors["empty"].code == "invalid_argument"
    assert errors["nul"].code == "invalid_argument"


def test_make_dir_move_list_remove(tmp_path: Path) -> None:
    async def scenario(agent: Agent) -> dict[str, Any]:
        made = await agent.call("MakeDir", proto.MakeDirRequest(path=str(tmp_path / "a" / "b")))
        (tmp_path / "a" / "b" / "f").write_text("x")
        moved = await agent.call(
            "Move", proto.MoveRequest(source=str(tmp_path / "a"), destination=str(tmp_path / "z" / "a2"))
        )
        flat = await agent.call("ListDir", proto.ListDirRequest(path=str(tmp_path)))
        deep = await agent.call("ListDir", proto.ListDirRequest(path=str(tmp_path), depth=3))
        await agent.call("Remove", proto.RemoveRequest(path=str(tmp_path / "z")))
        gone = await agent.fail("Stat", proto.StatRequest(path=str(tmp_path / "z")))
        return {"made": made, "moved": moved, "flat": flat, "deep": deep, "gone": gone}

    result = run(scenario)
    assert result["made"].entry.type == proto.FileType.FILE_TYPE_DIRECTORY
    assert result["moved"].entry.path == str(tmp_path / "z" / "a2")
    assert [e.name for e in result["flat"].entries] == ["z"]
    assert [e.path[len(str(tmp_path)) :] for e in result["deep"].entries] == ["/z", "/z/a2", "/z/a2/b"]
    assert result["gone"].code == "not_found"


def test_operations_run_as_the_selected_user(shared: Path) -> None:
    (shared / "private").mkdir(mode=0o700)
    (shared / "private" / "secret").write_text("s")

    async def scenario(agent: Agent) -> dict[str, Any]:
        return {
            "stat": await agent.fail("Stat", proto.StatRequest(path=str(shared / "private" / "secret")), "nobody"),
            "list": await agent.fail("ListDir", proto.ListDirRequest(path=str(shared / "private")), "nobody"),
            "remove": await agent.fail("Remove", proto.RemoveRequest(path=str(shared / "private")), "nobody"),
            "made": await agent.call("MakeDir", proto.MakeDirRequest(path=str(shared / "n" / "m")), "nobody"),
        }

    if os.geteuid() != 0:
        pytest.skip("acting as another user needs root")
    result = run(scenario)
    for name in ("stat", "list", "remove"):
        assert result[name].code == "permission_denied", name
    assert (result["made"].entry.owner, result["made"].entry.group) == ("nobody", "nogroup")
    assert (shared / "private" / "secret").exists()


async def next_message(stream: AsyncIterator[proto.WatchDirResponse], timeout: float = 5) -> proto.WatchDirResponse:
    return await asyncio.wait_for(stream.__anext__(), timeout)


def test_watch_dir_stream(tmp_path: Path) -> None:
    async def scenario(agent: Agent) -> list[tuple[str | None, Any]]:
        ctx = context("WatchDir", headers={"keepalive-ping-interval": "1"})
        stream = agent.handler("WatchDir")(proto.WatchDirRequest(path=str(tmp_path), recursive=True), ctx)
        seen = []
        first = await next_message(stream)
        seen.append((first.which_oneof("event"), None))
        (tmp_path / "sub").mkdir()
        message = await next_message(stream)
        seen.append((message.which_oneof("event"), (message.filesystem.name, message.filesystem.type)))
        await asyncio.sleep(0.1)  # the new directory's watch is in place: its events follow
        (tmp_path / "sub" / "f").write_text("x")
        for _ in range(2):
            message = await next_message(stream)
            seen.append((message.which_oneof("event"), (message.filesystem.name, message.filesystem.type)))
        message = await next_message(stream)  # quiet for a second
        seen.append((message.which_oneof("event"), None))
        ctx.closed.set()  # the client went away
        with pytest.raises(StopAsyncIteration):
            await next_message(stream)
        return seen

    assert run(scenario) == [
        ("start", None),
        ("filesystem", ("sub", proto.EventType.EVENT_TYPE_CREATE)),
        ("filesystem", ("sub/f", proto.EventType.EVENT_TYPE_CREATE)),
        ("filesystem", ("sub/f", proto.EventType.EVENT_TYPE_WRITE)),
        ("keepalive", None),
    ]


def test_watch_dir_closes_its_watch_when_the_stream_is_closed(tmp_path: Path) -> None:
    async def scenario(agent: Agent) -> tuple[int, int, int]:
        before = len(os.listdir("/proc/self/fd"))
        stream = agent.handler("WatchDir")(proto.WatchDirRequest(path=str(tmp_path)), context("WatchDir"))
        await next_message(stream)
        during = len(os.listdir("/proc/self/fd"))
        await stream.aclose()  # type: ignore[attr-defined]
        return before, during, len(os.listdir("/proc/self/fd"))

    before, during, after = run(scenario)
    assert during > before
    assert after == before


def test_watch_dir_of_a_missing_directory_fails_before_starting(tmp_path: Path) -> None:
    async def scenario(agent: Agent) -> ConnectError:
        stream = agent.handler("WatchDir")(proto.WatchDirRequest(path=str(tmp_path / "nope")), context("WatchDir"))
        with pytest.raises(ConnectError) as caught:
            await next_message(stream)
        return caught.value

    error = run(scenario)
    assert error.code == "not_found"
    assert "no such file or directory" in error.message


def test_polling_watcher(tmp_path: Path) -> None:
    async def scenario(agent: Agent) -> dict[str, Any]:
        created = await agent.call("CreateWatcher", proto.CreateWatcherRequest(path=str(tmp_path)))
        watcher_id = created.watcher_id
        (tmp_path / "a").write_text("1")
        (tmp_path / "a").unlink()
        await asyncio.sleep(0.1)
        first = await agent.call("GetWatcherEvents", proto.GetWatcherEventsRequest(watcher_id=watcher_id))
        second = await agent.call("GetWatcherEvents", proto.GetWatcherEventsRequest(watcher_id=watcher_id))
        await agent.call("RemoveWatcher", proto.RemoveWatcherRequest(watcher_id=watcher_id))
        gone = await agent.fail("GetWatcherEvents", proto.GetWatcherEventsRequest(watcher_id=watcher_id))
        missing = await agent.fail("CreateWatcher", proto.CreateWatcherRequest(path=str(tmp_path / "nope")))
        return {"first": first, "second": second, "gone": gone, "missing": missing}

    result = run(scenario)
    assert [(e.name, e.type) for e in result["first"].events] == [
        ("a", proto.EventType.EVENT_TYPE_CREATE),
        ("a", proto.EventType.EVENT_TYPE_WRITE),
        ("a", proto.EventType.EVENT_TYPE_REMOVE),
    ]
    assert result["second"].events == []
    assert result["gone"].code == "not_found"
    assert result["missing"].code == "not_found"
