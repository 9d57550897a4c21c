"""The official Python SDK's files, commands and PTY, unmodified, through the gateway to a real sandbox."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from tests.e2e.appliance import Appliance

pytestmark = pytest.mark.podman


@pytest.fixture
def sdk_env(appliance: Appliance, monkeypatch: pytest.MonkeyPatch) -> Appliance:
    for name, value in appliance.sdk_env().items():
        monkeypatch.setenv(name, value)
    return appliance


@pytest.fixture
def sandbox(sdk_env: Appliance) -> Iterator[object]:
    from scalebox.sandbox_sync import Sandbox

    sbx = Sandbox.create()
    try:
        yield sbx
    finally:
        sbx.kill()


def test_files_round_trip_and_metadata(sandbox: object) -> None:
    from scalebox.exceptions import NotFoundException
    from scalebox.sandbox.filesystem.filesystem import FileType

    files = sandbox.files  # type: ignore[attr-defined]
    info = files.write("/home/user/notes/hello.txt", "héllo\n")
    assert info.path == "/home/user/notes/hello.txt"
    assert files.read("/home/user/notes/hello.txt") == "héllo\n"
    files.write("/home/user/notes/blob.bin", bytes(range(256)))
    assert bytes(files.read("/home/user/notes/blob.bin", format="bytes")) == bytes(range(256))
    assert b"".join(files.read("/home/user/notes/blob.bin", format="stream")) == bytes(range(256))

    assert files.exists("/home/user/notes/hello.txt")
    assert not files.exists("/home/user/notes/missing.txt")
    entry = files.get_info("/home/user/notes/hello.txt")
    assert entry.type == FileType.FILE and entry.size == len("héllo\n".encode())

    assert files.make_dir("/home/user/notes/sub/deeper") is True
    assert files.make_dir("/home/user/notes/sub/deeper") is False  # already exists
    files.write("/home/user/notes/sub/deeper/x.txt", "x")
    top = {e.name for e in files.list("/home/user/notes")}
    assert top == {"hello.txt", "blob.bin", "sub"}
    deep = {e.path for e in files.list("/home/user/notes", depth=3)}
    assert "/home/user/notes/sub/deeper/x.txt" in deep

    moved = files.rename("/home/user/notes/hello.txt", "/home/user/notes/moved.txt")
    assert moved.path == "/home/user/notes/moved.txt"
    assert files.read("/home/user/notes/moved.txt") == "héllo\n"
    files.remove("/home/user/notes/sub")
    assert not files.exists("/home/user/notes/sub")
    with pytest.raises(NotFoundException):
        files.read("/home/user/notes/sub/deeper/x.txt")


def test_watch_dir_reports_changes(sandbox: object) -> None:
    files = sandbox.files  # type: ignore[attr-defined]
    files.make_dir("/home/user/watched")
    handle = files.watch_dir("/home/user/watched")
    try:
        files.write("/home/user/watched/a.txt", "1")
        sandbox.commands.run("mv /home/user/watched/a.txt /home/user/watched/b.txt && rm /home/user/watched/b.txt")  # type: ignore[attr-defined]
        seen: list[tuple[str, str]] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(t.endswith("REMOVE") for _, t in seen):
            seen += [(e.name, str(e.type)) for e in handle.get_new_events()]
            time.sleep(0.2)
        names = {name for name, _ in seen}
        assert {"a.txt", "b.txt"} <= names, seen
        kinds = {kind.rsplit(".", 1)[-1] for _, kind in seen}
        assert {"CREATE", "RENAME", "REMOVE"} <= kinds, seen
    finally:
        handle.stop()


def test_commands(sandbox: object) -> None:
    from scalebox.sandbox.commands.command_handle import PtySize
    from scalebox.sandbox_sync import CommandExitException

    commands = sandbox.commands  # type: ignore[attr-defined]
    # SDK 1.0.10 sends `Authorization: Bearer root` on every call and ignores its
    # own `user=` argument, so commands run as root (COMPAT.md: default root).
    result = commands.run("echo $GREETING from $(pwd) as $(whoami)", envs={"GREETING": "hi"}, cwd="/tmp")
    assert result.exit_code == 0 and result.stdout == "hi from /tmp as root\n"

    out: list[str] = []
    err: list[str] = []
    commands.run("echo one; echo two >&2; echo three", on_stdout=out.append, on_stderr=err.append)
    assert "".join(out) == "one\nthree\n" and "".join(err) == "two\n"

    with pytest.raises(CommandExitException) as failed:
        commands.run("echo oops >&2; exit 3")
    assert failed.value.exit_code == 3 and "oops" in failed.value.stderr

    # A command waiting on stdin, run from another thread: found with list(), fed with send_stdin().
    results: list[object] = []
    waiter = threading.Thread(target=lambda: results.append(commands.run("read line; echo got:$line")))
    waiter.start()
    deadline = time.monotonic() + 10
    pid = None
    while pid is None and time.monotonic() < deadline:
        pid = next((p.pid for p in commands.list() if "read line; echo got:$line" in p.args), None)
        time.sleep(0.05)
    assert pid is not None, "the running command is not listed"
    commands.send_stdin(pid, "ping\n")
    waiter.join(10)
    assert results and results[0].stdout == "got:ping\n"  # type: ignore[attr-defined]

    # SDK 1.0.10's background=True runs `cmd &`: the shell returns at once and the job goes on.
    handle = commands.run("sleep 1; echo done > /tmp/bg.txt", background=True)
    assert handle.wait().exit_code == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not sandbox.files.exists("/tmp/bg.txt"):  # type: ignore[attr-defined]
        time.sleep(0.1)
    assert sandbox.files.read("/tmp/bg.txt") == "done\n"  # type: ignore[attr-defined]

    # A long-running process: connect from a second handle, kill, and both see it end.
    shell = sandbox.pty.create(PtySize(rows=24, cols=80))  # type: ignore[attr-defined]
    other = commands.connect(shell.pid)
    assert other.pid == shell.pid and shell.pid in {p.pid for p in commands.list()}
    assert commands.kill(shell.pid) is True
    for handle in (shell, other):
        with pytest.raises(CommandExitException):
            handle.wait()
    assert shell.pid not in {p.pid for p in commands.list()}
    assert commands.kill(999_999) is False


def test_pty(sandbox: object) -> None:
    from scalebox.sandbox.commands.command_handle import PtySize

    pty = sandbox.pty  # type: ignore[attr-defined]
    handle = pty.create(PtySize(rows=24, cols=80))
    output = bytearray()
    waiter = threading.Thread(target=lambda: handle.wait(on_pty=lambda data: output.extend(data)), daemon=True)
    waiter.start()
    pty.send_stdin(handle.pid, b"stty size; tty\n")
    # Resize only once the shell answered the first line: a slow shell would
    # otherwise see the new size for both.
    deadline = time.monotonic() + 30
    while b"/dev/pts/" not in output:
        assert time.monotonic() < deadline, output
        time.sleep(0.05)
    pty.resize(handle.pid, PtySize(rows=40, cols=100))
    pty.send_stdin(handle.pid, b"stty size; exit\n")
    waiter.join(30)
    assert not waiter.is_alive()
    text = output.decode(errors="replace")
    assert "24 80" in text and "40 100" in text and "/dev/pts/" in text


def test_large_file_round_trip(sandbox: object, tmp_path: object) -> None:
    files = sandbox.files  # type: ignore[attr-defined]
    data = os.urandom(100 * 1024 * 1024)
    files.write("/tmp/big.bin", data)
    back = bytes(files.read("/tmp/big.bin", format="bytes"))
    assert len(back) == len(data) and hashlib.sha256(back).digest() == hashlib.sha256(data).digest()


ASYNC_SCRIPT = """
import asyncio
from scalebox.sandbox_async import AsyncSandbox

async def main():
    sbx = await AsyncSandbox.create()
    try:
        await sbx.files.write("/tmp/a.txt", "async")
        assert await sbx.files.read("/tmp/a.txt") == "async"
        result = await sbx.commands.run("cat /tmp/a.txt; echo; echo err >&2")
        assert (result.stdout, result.stderr) == ("async\\n", "err\\n"), result
        entries = await asyncio.wait_for(sbx.files.list("/tmp"), 30)
        assert "a.txt" in {e.name for e in entries}
        print("async-sdk-ok")
    finally:
        await sbx.kill()

asyncio.run(main())
"""


def test_async_sdk(sdk_env: Appliance) -> None:
    # The async SDK (asyncio + aiohttp) runs in a process of its own: aiohttp reads
    # SSL_CERT_FILE when it is imported, as it would in a user's program.
    done = subprocess.run(
        [sys.executable, "-c", ASYNC_SCRIPT], env={**os.environ, **sdk_env.sdk_env()},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "async-sdk-ok" in done.stdout
