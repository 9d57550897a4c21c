"""agent/fs against the real file system: entries, operations, inotify watching, upload staging.

Runs as root (the agent does); permission cases act as ``nobody``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import users
from agent.fs import ops
from agent.fs.entries import TYPE_DIRECTORY, TYPE_FILE, TYPE_UNSPECIFIED, Names, list_dir, stat_entry
from agent.fs.errors import FsError
from agent.fs.files import CHUNK, FileBody, Upload, open_download
from agent.fs.multipart import MultipartParser, boundary_of
from agent.fs.watch import EVENT_CHMOD, EVENT_CREATE, EVENT_REMOVE, EVENT_RENAME, EVENT_WRITE, Watcher, WatcherTable

ROOT = users.lookup("root")
NOBODY = users.lookup("nobody")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")


@pytest.fixture
def shared() -> Iterator[Path]:
    """A world-writable directory every user can reach (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="agent-fs-", dir="/tmp"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def as_nobody() -> contextlib.AbstractContextManager[None]:
    return users.acting_as(NOBODY)


def error_of(operation, *args) -> FsError:  # type: ignore[no-untyped-def]
    with pytest.raises(FsError) as caught:
        operation(*args)
    return caught.value


# --- entries ----------------------------------------------------------------------


def test_stat_entry_of_a_file(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"hello")
    path.chmod(0o640)
    os.utime(path, ns=(1_600_000_000_000_000_001, 1_600_000_000_000_000_001))
    entry = stat_entry(str(path), Names())
    assert (entry.name, entry.path, entry.type, entry.size) == ("a.txt", str(path), TYPE_FILE, 5)
    assert (entry.mode, entry.permissions) == (0o640, "-rw-r-----")
    assert (entry.owner, entry.group) == ("root", "root")
    assert entry.mtime_ns == 1_600_000_000_000_000_001
    assert entry.symlink_target is None


def test_stat_entry_of_symlinks(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to("dir")
    (tmp_path / "chain").symlink_to("link")
    (tmp_path / "dangling").symlink_to("nowhere")
    link = stat_entry(str(tmp_path / "chain"), Names())
    assert link.type == TYPE_DIRECTORY
    assert link.symlink_target == str(tmp_path / "dir")  # resolved all the way
    assert link.permissions.startswith("l")
    dangling = stat_entry(str(tmp_path / "dangling"), Names())
    assert dangling.type == TYPE_UNSPECIFIED
    assert dangling.symlink_target == str(tmp_path / "nowhere")


def test_stat_entry_of_a_missing_path(tmp_path: Path) -> None:
    error = error_of(stat_entry, str(tmp_path / "nope"), Names())
    assert error.code == "not_found"
    assert "no such file or directory" in error.message


def test_list_dir_depths_and_order(tmp_path: Path) -> None:
    for name in ("b/y/deep", "a/x", "c"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "b" / "file").write_text("f")
    (tmp_path / "link-to-b").symlink_to("b")
    names = [e.path[len(str(tmp_path)) + 1 :] for e in list_dir(str(tmp_path), 1, Names())]
    assert names == ["a", "b", "c", "link-to-b"]
    names = [e.path[len(str(tmp_path)) + 1 :] for e in list_dir(str(tmp_path), 2, Names())]
    assert names == ["a", "a/x", "b", "b/file", "b/y", "c", "link-to-b"]  # a symlink is not entered
    names = [e.path[len(str(tmp_path)) + 1 :] for e in list_dir(str(tmp_path), 999, Names())]
    assert names == ["a", "a/x", "b", "b/file", "b/y", "b/y/deep", "c", "link-to-b"]
    assert [e.type for e in list_dir(str(tmp_path / "b"), 1, Names())] == [TYPE_FILE, TYPE_DIRECTORY]


def test_list_dir_follows_a_symlinked_root_and_names_entries_under_it(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f").write_text("")
    (tmp_path / "alias").symlink_to("real")
    [entry] = list_dir(str(tmp_path / "alias"), 1, Names())
    assert entry.path == str(tmp_path / "alias" / "f")


def test_list_dir_errors(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    assert error_of(list_dir, str(tmp_path / "file"), 1, Names()).code == "invalid_argument"
    assert error_of(list_dir, str(tmp_path / "missing"), 1, Names()).code == "not_found"
    for i in range(5):
        (tmp_path / f"n{i}").write_text("")
    assert error_of(list_dir, str(tmp_path), 1, Names(), 3).code == "resource_exhausted"


@needs_root
def test_list_dir_skips_unreadable_subdirectories(shared: Path) -> None:
    (shared / "open" / "inside").mkdir(parents=True)
    (shared / "closed" / "secret").mkdir(parents=True)
    (shared / "closed").chmod(0o700)
    with as_nobody():
        names = [e.name for e in list_dir(str(shared), 2, Names())]
    assert names == ["closed", "open", "inside"]
    with as_nobody():
        assert error_of(list_dir, str(shared / "closed"), 1, Names()).code == "permission_denied"


# --- operations -------------------------------------------------------------------


def test_make_dir_creates_parents(tmp_path: Path) -> None:
    entry = ops.make_dir(str(tmp_path / "a" / "b" / "c"))
    assert entry.type == TYPE_DIRECTORY
    assert entry.path == str(tmp_path / "a" / "b" / "c")
    assert (tmp_path / "a" / "b" / "c").is_dir()


def test_make_dir_of_an_existing_directory_says_so(tmp_path: Path) -> None:
    error = error_of(ops.make_dir, str(tmp_path))
    assert error.code == "already_exists"
    assert "directory already exists" in error.message
    (tmp_path / "file").write_text("")
    error = error_of(ops.make_dir, str(tmp_path / "file"))
    assert error.code == "already_exists"
    assert "directory already exists" not in error.message  # make_dir() must not report False for a file


@needs_root
def test_make_dir_as_a_user(shared: Path) -> None:
    with as_nobody():
        ops.make_dir(str(shared / "mine" / "sub"))
        assert error_of(ops.make_dir, "/root/not-yours").code == "permission_denied"
    assert (shared / "mine" / "sub").stat().st_uid == NOBODY.uid
    assert (shared / "mine").stat().st_uid == NOBODY.uid


def test_move_renames_and_creates_parents(tmp_path: Path) -> None:
    (tmp_path / "src.txt").write_text("x")
    entry = ops.move(str(tmp_path / "src.txt"), str(tmp_path / "new" / "dir" / "dst.txt"))
    assert entry.path == str(tmp_path / "new" / "dir" / "dst.txt")
    assert entry.name == "dst.txt"
    assert (tmp_path / "new" / "dir" / "dst.txt").read_text() == "x"
    assert not (tmp_path / "src.txt").exists()


def test_move_errors(tmp_path: Path) -> None:
    error = error_of(ops.move, str(tmp_path / "missing"), str(tmp_path / "x"))
    assert error.code == "not_found"
    assert "no such file or directory" in error.message
    (tmp_path / "d" / "sub").mkdir(parents=True)
    assert error_of(ops.move, str(tmp_path / "d"), str(tmp_path / "d" / "sub" / "in-itself")).code == (
        "invalid_argument"
    )


def test_move_across_file_systems(tmp_path: Path) -> None:
    other = Path("/dev/shm")
    if not other.is_dir() or other.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second file system at hand")
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "sub" / "f").write_text("data")
    target = other / f"agent-fs-move-{os.getpid()}"
    try:
        entry = ops.move(str(tmp_path / "tree"), str(target))
        assert entry.type == TYPE_DIRECTORY
        assert (target / "sub" / "f").read_text() == "data"
        assert not (tmp_path / "tree").exists()
    finally:
        shutil.rmtree(target, ignore_errors=True)


def test_remove(tmp_path: Path) -> None:
    (tmp_path / "tree" / "a" / "b").mkdir(parents=True)
    (tmp_path / "tree" / "a" / "f").write_text("")
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "precious").write_text("")
    (tmp_path / "link").symlink_to("keep")
    ops.remove(str(tmp_path / "tree"))
    ops.remove(str(tmp_path / "link"))  # the link, not what it points to
    assert sorted(os.listdir(tmp_path)) == ["keep"]
    assert (tmp_path / "keep" / "precious").exists()
    error = error_of(ops.remove, str(tmp_path / "tree"))
    assert (error.code, "no such file or directory" in error.message) == ("not_found", True)
    assert error_of(ops.remove, "/").code == "invalid_argument"


@needs_root
def test_remove_as_a_user_is_bound_by_permissions(shared: Path) -> None:
    (shared / "roots").mkdir()
    (shared / "roots" / "f").write_text("")
    (shared / "roots").chmod(0o755)
    with as_nobody():
        assert error_of(ops.remove, str(shared / "roots" / "f")).code == "permission_denied"
    assert (shared / "roots" / "f").exists()


# --- watching ---------------------------------------------------------------------


def run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coroutine, 10))


async def settle(watcher: Watcher, expected: int) -> list[tuple[str, int]]:
    """The watcher's events once at least ``expected`` arrived (or a short while passed)."""
    events: list[tuple[str, int]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2
    while len(events) < expected and loop.time() < deadline:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(watcher.changed.wait(), deadline - loop.time())
        events += watcher.take()
    await asyncio.sleep(0.05)  # anything extra shows up too
    return events + watcher.take()


def test_watch_a_directory(tmp_path: Path) -> None:
    async def scenario() -> list[tuple[str, int]]:
        watcher = Watcher(str(tmp_path), False, contextlib.nullcontext)
        watcher.start()
        try:
            path = tmp_path / "f.txt"
            path.write_bytes(b"one")
            with path.open("ab") as f:  # many writes: one WRITE event each after the first coalesce
                for _ in range(50):
                    f.write(b"x")
                    f.flush()
            path.chmod(0o600)
            path.rename(tmp_path / "g.txt")
            (tmp_path / "g.txt").unlink()
            (tmp_path / "d").mkdir()
            (tmp_path / "d" / "inner").write_text("not watched: not recursive")
            return await settle(watcher, 7)
        finally:
            watcher.close()

    assert run(scenario()) == [
        ("f.txt", EVENT_CREATE),
        ("f.txt", EVENT_WRITE),
        ("f.txt", EVENT_CHMOD),
        ("f.txt", EVENT_RENAME),
        ("g.txt", EVENT_CREATE),
        ("g.txt", EVENT_REMOVE),
        ("d", EVENT_CREATE),
    ]


def test_watch_recursively(tmp_path: Path) -> None:
    (tmp_path / "old" / "sub").mkdir(parents=True)
    (tmp_path / "old" / "sub" / "a").write_text("")

    async def scenario() -> list[list[tuple[str, int]]]:
        watcher = Watcher(str(tmp_path), True, contextlib.nullcontext)
        watcher.start()
        try:
            steps = []
            (tmp_path / "old" / "sub" / "b").write_text("")
            steps.append(await settle(watcher, 1))
            (tmp_path / "p" / "q" / "r").mkdir(parents=True)  # faster than the watches are added
            (tmp_path / "p" / "q" / "r" / "file").write_text("")
            steps.append(await settle(watcher, 4))
            (tmp_path / "old").rename(tmp_path / "renamed")
            steps.append(await settle(watcher, 2))
            (tmp_path / "renamed" / "sub" / "c").write_text("")
            steps.append(await settle(watcher, 1))
            return steps
        finally:
            watcher.close()

    assert run(scenario()) == [
        [("old/sub/b", EVENT_CREATE)],
        [("p", EVENT_CREATE), ("p/q", EVENT_CREATE), ("p/q/r", EVENT_CREATE), ("p/q/r/file", EVENT_CREATE)],
        [("old", EVENT_RENAME), ("renamed", EVENT_CREATE)],  # what it holds is not new
        [("renamed/sub/c", EVENT_CREATE)],  # names follow a moved directory
    ]


def test_watch_ends_when_the_directory_goes(tmp_path: Path) -> None:
    root = tmp_path / "watched"
    root.mkdir()

    async def scenario() -> Watcher:
        watcher = Watcher(str(root), True, contextlib.nullcontext)
        watcher.start()
        (root / "f").write_text("")
        shutil.rmtree(root)
        assert await settle(watcher, 2) == [("f", EVENT_CREATE), ("f", EVENT_REMOVE)]
        return watcher

    watcher = run(scenario())
    assert watcher.gone
    assert watcher.changed.is_set()


def test_watch_errors(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    for i in range(4):
        (tmp_path / "dirs" / str(i)).mkdir(parents=True)

    async def start(path: Path, recursive: bool = False, max_watches: int = 100) -> FsError:
        watcher = Watcher(str(path), recursive, contextlib.nullcontext, max_watches=max_watches)
        with pytest.raises(FsError) as caught:
            watcher.start()
        return caught.value

    assert run(start(tmp_path / "missing")).code == "not_found"
    assert run(start(tmp_path / "file")).code == "invalid_argument"
    assert run(start(tmp_path / "dirs", True, max_watches=3)).code == "resource_exhausted"


@needs_root
def test_watch_as_a_user_needs_read_permission(shared: Path) -> None:
    (shared / "closed").mkdir(mode=0o700)

    async def start() -> FsError:
        watcher = Watcher(str(shared / "closed"), False, as_nobody)
        with pytest.raises(FsError) as caught:
            watcher.start()
        return caught.value

    assert run(start()).code == "permission_denied"


def test_watcher_table_evicts_the_least_recently_polled(tmp_path: Path) -> None:
    async def scenario() -> None:
        table = WatcherTable(max_watchers=2)
        watchers = [Watcher(str(tmp_path), False, contextlib.nullcontext) for _ in range(3)]
        for watcher in watchers:
            watcher.start()
        first = table.add(watchers[0])
        second = table.add(watchers[1])
        table.get(first)  # polled: now the most recent
        third = table.add(watchers[2])
        assert len(table) == 2
        with pytest.raises(FsError) as caught:
            table.get(second)
        assert caught.value.code == "not_found"
        table.remove(first)
        table.get(third)
        table.close()
        assert len(table) == 0

    run(scenario())


# --- download and upload files ----------------------------------------------------


async def drain(body: FileBody) -> bytes:
    return b"".join([chunk async for chunk in body])


def test_file_body_of_a_small_file(tmp_path: Path) -> None:
    (tmp_path / "small").write_bytes(b"abc")
    fd, path = open_download([str(tmp_path / "small")])
    body = FileBody(fd, path)
    assert body.length == 3
    assert run(drain(body)) == b"abc"


def test_file_body_of_a_large_file_streams_its_exact_size(tmp_path: Path) -> None:
    data = os.urandom(CHUNK * 5 + 17)
    (tmp_path / "large").write_bytes(data)
    fd, path = open_download([str(tmp_path / "large")])
    body = FileBody(fd, path)
    assert body.length == len(data)
    assert run(drain(body)) == data


def test_file_body_of_a_file_without_a_size() -> None:
    fd, path = open_download(["/proc/self/status"])
    body = FileBody(fd, path)
    assert body.length is not None  # small: read ahead, so its real length is known
    assert b"Name:" in run(drain(body))


def test_file_body_notices_a_file_that_shrank(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * (CHUNK * 3))
    fd, path = open_download([str(tmp_path / "f")])
    body = FileBody(fd, path)
    os.truncate(tmp_path / "f", CHUNK * 2)
    with pytest.raises(OSError):
        run(drain(body))


def test_open_download_falls_back_and_refuses_what_is_not_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    fd, path = open_download([str(tmp_path / "missing"), str(tmp_path / "f")])
    os.close(fd)
    assert path == str(tmp_path / "f")
    error = error_of(open_download, [str(tmp_path / "missing"), str(tmp_path / "also-missing")])
    assert error.code == "not_found"
    assert str(tmp_path / "missing") in error.message
    assert error_of(open_download, [str(tmp_path)]).code == "invalid_argument"
    os.mkfifo(tmp_path / "fifo")
    assert error_of(open_download, [str(tmp_path / "fifo")]).code == "invalid_argument"  # and did not block


def feed_upload(upload: Upload, body: bytes, content_type: str, chunk: int = 1000) -> list[dict[str, str]]:
    parser = MultipartParser(boundary_of(content_type))
    try:
        for i in range(0, len(body), chunk):
            for event in parser.feed(body[i : i + chunk]):
                upload.on_event(event)
        parser.close()
        return upload.finish()
    finally:
        upload.discard()


def multipart(*parts: tuple[str, str | None, bytes]) -> tuple[bytes, str]:
    """A body with the parts in the given order (httpx always puts fields first)."""
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += b"--XyZ\r\nContent-Disposition: " + disposition.encode() + b"\r\n\r\n" + content + b"\r\n"
    return out + b"--XyZ--\r\n", "multipart/form-data; boundary=XyZ"


def test_upload_path_field_first(tmp_path: Path) -> None:
    target = tmp_path / "new" / "dir" / "f.bin"
    data = os.urandom(300_000)
    body, content_type = multipart(("path", None, str(target).encode()), ("file", str(target), data))
    written = feed_upload(Upload(ROOT, None), body, content_type)
    assert written == [{"name": "f.bin", "type": "file", "path": str(target)}]
    assert target.read_bytes() == data
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert os.listdir(target.parent) == ["f.bin"]  # no temporary file left


def test_upload_path_field_after_the_file_as_javascript_sends_it(tmp_path: Path) -> None:
    target = tmp_path / "js.txt"
    body, content_type = multipart(("file", "blob", b"from js"), ("path", None, str(target).encode()))
    assert feed_upload(Upload(ROOT, None), body, content_type)[0]["path"] == str(target)
    assert target.read_bytes() == b"from js"
    assert sorted(os.listdir(tmp_path)) == ["js.txt"]


def test_upload_query_path_wins_and_a_directory_takes_the_file_name(tmp_path: Path) -> None:
    body, content_type = multipart(("path", None, b"/elsewhere"), ("file", "/x/y/name.txt", b"1"))
    written = feed_upload(Upload(ROOT, str(tmp_path)), body, content_type)
    assert written[0]["path"] == str(tmp_path / "name.txt")
    assert not Path("/elsewhere").exists()


def test_upload_several_files_into_a_directory(tmp_path: Path) -> None:
    body, content_type = multipart(
        ("path", None, f"{tmp_path}/into/".encode()), ("file", "a", b"A"), ("file", "b", b"B")
    )
    written = feed_upload(Upload(ROOT, None), body, content_type)
    assert [w["path"] for w in written] == [str(tmp_path / "into" / "a"), str(tmp_path / "into" / "b")]
    assert (tmp_path / "into" / "b").read_bytes() == b"B"


def test_upload_of_several_files_to_one_path_is_refused_whole(tmp_path: Path) -> None:
    body, content_type = multipart(
        ("path", None, str(tmp_path / "one").encode()), ("file", "a", b"A"), ("file", "b", b"B")
    )
    assert error_of(feed_upload, Upload(ROOT, None), body, content_type).code == "invalid_argument"
    assert os.listdir(tmp_path) == []


def test_upload_without_a_path_uses_the_file_name_under_home(tmp_path: Path) -> None:
    home = ROOT._replace(home=str(tmp_path))
    body, content_type = multipart(("file", "sub/rel.txt", b"r"))
    assert feed_upload(Upload(home, None), body, content_type)[0]["path"] == str(tmp_path / "sub" / "rel.txt")


def test_upload_overwrite_keeps_mode_and_writes_through_symlinks(tmp_path: Path) -> None:
    (tmp_path / "script.sh").write_text("old")
    (tmp_path / "script.sh").chmod(0o755)
    (tmp_path / "link").symlink_to("script.sh")
    body, content_type = multipart(("file", str(tmp_path / "link"), b"new"))
    feed_upload(Upload(ROOT, None), body, content_type)
    assert (tmp_path / "link").is_symlink()
    assert (tmp_path / "script.sh").read_text() == "new"
    assert stat.S_IMODE((tmp_path / "script.sh").stat().st_mode) == 0o755


def test_upload_failure_leaves_nothing_behind(tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    body, content_type = multipart(("file", str(tmp_path / "adir") + "/", b"no name for it"))
    upload = Upload(ROOT, None)
    with pytest.raises(FsError):
        feed_upload(upload, body, content_type)
    assert sorted(os.listdir(tmp_path)) == ["adir"]
    assert os.listdir(tmp_path / "adir") == []
    truncated = multipart(("file", str(tmp_path / "t"), b"x" * 5000))[0][:-20]
    parser = MultipartParser(b"XyZ")
    upload = Upload(ROOT, None)
    for event in parser.feed(truncated):
        upload.on_event(event)
    upload.discard()
    assert sorted(os.listdir(tmp_path)) == ["adir"]


def test_upload_needs_a_file_part(tmp_path: Path) -> None:
    body, content_type = multipart(("path", None, str(tmp_path / "x").encode()))
    assert error_of(feed_upload, Upload(ROOT, None), body, content_type).code == "invalid_argument"


@needs_root
def test_upload_as_a_user_owns_the_file_and_respects_permissions(shared: Path) -> None:
    body, content_type = multipart(("file", str(shared / "deep" / "mine.txt"), b"m"))
    feed_upload(Upload(NOBODY, None), body, content_type)
    assert (shared / "deep" / "mine.txt").stat().st_uid == NOBODY.uid
    assert (shared / "deep").stat().st_uid == NOBODY.uid
    (shared / "roots").mkdir(mode=0o755)
    body, content_type = multipart(("file", str(shared / "roots" / "x"), b"m"))
    assert error_of(feed_upload, Upload(NOBODY, None), body, content_type).code == "permission_denied"
    assert os.listdir(shared / "roots") == []
