"""The Process service end to end: a real agent process on 127.0.0.1 driven by the
official Python SDK's command and PTY clients, sync and async.

The agent runs on this venv's Python and, when pyenv has one, on Python 3.9
with h11 vendored the way the appliance mounts it.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import h11
import pytest
import urllib3
from scalebox.connection_config import ConnectionConfig
from scalebox.sandbox.commands.command_handle import CommandExitException, PtySize
from scalebox.sandbox_async.commands.command import Commands as AsyncCommands
from scalebox.sandbox_async.commands.pty import Pty as AsyncPty
from scalebox.sandbox_sync.commands.command import Commands

from tests.unit.agent_helpers import python39

REPO = Path(__file__).resolve().parents[2]
TOKEN = "procsvc-test-token"
HEADERS = {"Authorization": "Bearer root", "X-Access-Token": TOKEN}  # what the SDK sends


class Agent:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        self.log = log

    def healthy(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", "/health")
            return conn.getresponse().status == 204
        except OSError:
            return False
        finally:
            conn.close()

    def rss_kb(self, field: str = "VmRSS") -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
        raise AssertionError(f"no {field}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module", params=["venv", "python3.9"])
def agent(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    work = tmp_path_factory.mktemp("agent")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALEBOX_")}
    port = _free_port()
    env.update({"SCALEBOX_AGENT_PORT": str(port), "SCALEBOX_ACCESS_TOKEN": TOKEN, "FROM_THE_IMAGE": "kept"})
    if request.param == "venv":
        python = sys.executable
    else:
        python = python39()
        vendor = work / "vendor"
        shutil.copytree(Path(h11.__file__).parent, vendor / "h11")
        env["SCALEBOX_AGENT_VENDOR"] = str(vendor)
    log = work / "agent.err"
    with log.open("wb") as err:
        proc = subprocess.Popen([python, "-m", "agent"], cwd=REPO, env=env, stdin=subprocess.DEVNULL, stderr=err)
    running = Agent(proc, port, log)
    deadline = time.monotonic() + 10
    while not running.healthy():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    try:
        yield running
    finally:
        proc.terminate()
        proc.wait(10)
        text = log.read_text()
        assert '"event":"rpc_error"' not in text, text  # no handler failed unexpectedly
        assert '"event":"loop_error"' not in text, text


def _config(request_timeout: float | None = None) -> ConnectionConfig:
    return ConnectionConfig(api_key="unused", domain="unused", headers=HEADERS, request_timeout=request_timeout)


@pytest.fixture
def commands(agent: Agent) -> Commands:
    return Commands(agent.url, _config(), urllib3.PoolManager(headers=HEADERS))


def test_run(commands: Commands, tmp_path: Path) -> None:
    result = commands.run("echo hi; echo there >&2")
    assert (result.stdout, result.stderr, result.exit_code, result.error) == ("hi\n", "there\n", 0, "")
    seen: list[str] = []
    result = commands.run(
        'echo "$FOO $FROM_THE_IMAGE ${SCALEBOX_ACCESS_TOKEN-none}"; pwd',
        envs={"FOO": "bar"},
        cwd=str(tmp_path),
        on_stdout=seen.append,
    )
    assert result.stdout == f"bar kept none\n{tmp_path}\n"
    assert "".join(seen) == result.stdout


def test_a_failing_command(commands: Commands) -> None:
    with pytest.raises(CommandExitException) as caught:
        commands.run("echo partial; echo bad >&2; exit 3")
    assert (caught.value.exit_code, caught.value.stdout, caught.value.stderr) == (3, "partial\n", "bad\n")
    assert caught.value.error == "exit status 3"
    # This SDK's command client passes connectrpc's errors through unmapped: only the text matters.
    with pytest.raises(Exception, match=r"invalid_argument.*no such file or directory"):
        commands.run("true", cwd="/no/such/dir")


def test_a_quiet_command_outlives_the_request_timeout(agent: Agent) -> None:
    # The SDK sends its request timeout as Connect-Timeout-Ms and as its read timeout.
    quick = Commands(agent.url, _config(request_timeout=1), urllib3.PoolManager(headers=HEADERS))
    result = quick.run("sleep 2.2; echo awake", request_timeout=1)
    assert result.stdout == "awake\n"


def test_large_output_over_http(commands: Commands, agent: Agent) -> None:
    size = 10_000_000
    before = agent.rss_kb()
    result = commands.run(f"head -c {size} /dev/zero | tr '\\0' a")
    assert len(result.stdout) == size
    assert set(result.stdout) == {"a"}
    assert agent.rss_kb() - before < 16 * 1024  # streamed through, not held


def run_async(agent: Agent, scenario: Callable[[AsyncCommands, AsyncPty], Awaitable[None]]) -> None:
    async def main() -> None:
        async with aiohttp.ClientSession(headers=HEADERS) as session:
            await asyncio.wait_for(
                scenario(AsyncCommands(agent.url, _config(), session), AsyncPty(agent.url, _config(), session)), 30
            )

    asyncio.run(main())


async def eventually(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def test_async_run(agent: Agent) -> None:
    async def scenario(commands: AsyncCommands, _: AsyncPty) -> None:
        result = await commands.run("echo async; echo err >&2")
        assert (result.stdout, result.stderr, result.exit_code) == ("async\n", "err\n", 0)
        with pytest.raises(CommandExitException) as caught:
            await commands.run("exit 7")
        assert (caught.value.exit_code, caught.value.error) == (7, "exit status 7")

    run_async(agent, scenario)


def test_background_list_stdin_connect_and_kill(agent: Agent) -> None:
    async def scenario(commands: AsyncCommands, _: AsyncPty) -> None:
        chunks: list[str] = []
        handle = await commands.run(
            'while read line; do echo "got $line"; done', background=True, on_stdout=chunks.append
        )
        [info] = [p for p in await commands.list() if p.pid == handle.pid]
        assert (info.cmd, info.args[:2]) == ("/bin/bash", ["-l", "-c"])
        watched: list[str] = []
        second = await commands.connect(handle.pid, on_stdout=watched.append)
        await commands.send_stdin(handle.pid, "one\n")
        await eventually(lambda: "".join(chunks) == "".join(watched) == "got one\n", "both streams to see the output")
        assert await commands.kill(handle.pid) is True
        for each in (handle, second):
            with pytest.raises(CommandExitException) as caught:
                await each.wait()
            assert (caught.value.exit_code, caught.value.error) == (-1, "signal: killed")
        assert await commands.kill(handle.pid) is False  # gone: "not found"
        assert handle.pid not in [p.pid for p in await commands.list()]

    run_async(agent, scenario)


def test_disconnect_leaves_the_command_running(agent: Agent, tmp_path: Path) -> None:
    marker = tmp_path / "marker"

    async def scenario(commands: AsyncCommands, _: AsyncPty) -> None:
        handle = await commands.run(f'read line; echo "$line" > {marker}', background=True)
        await handle.disconnect()
        await asyncio.sleep(0.1)
        await commands.send_stdin(handle.pid, "still here\n")
        await eventually(lambda: marker.exists() and marker.read_text() == "still here\n", "the marker")
        # Nobody took its end yet: a later connect still learns how it ended.
        later = await commands.connect(handle.pid)
        assert (await later.wait()).exit_code == 0

    run_async(agent, scenario)


def test_pty(agent: Agent) -> None:
    async def scenario(_: AsyncCommands, pty: AsyncPty) -> None:
        output = bytearray()
        handle = await pty.create(PtySize(rows=24, cols=80), on_data=output.extend)
        await pty.send_stdin(handle.pid, b"tty; stty size; echo $TERM\n")
        await eventually(lambda: b"xterm-256color\r\n" in output, "the terminal's answers")
        assert b"/dev/pts/" in output
        assert b"24 80" in output
        await pty.resize(handle.pid, PtySize(rows=50, cols=132))
        await pty.send_stdin(handle.pid, b"stty size\n")
        await eventually(lambda: b"50 132" in output, "the new size")
        await pty.send_stdin(handle.pid, b"exit 9\n")
        with pytest.raises(CommandExitException) as caught:
            await handle.wait()
        assert caught.value.exit_code == 9
        # This SDK's async PTY client does not map connectrpc's not_found to False.
        with pytest.raises(Exception, match="not found"):
            await pty.kill(handle.pid)

    run_async(agent, scenario)


def test_sync_sdk_sees_a_running_command(commands: Commands) -> None:
    """The sync SDK reads its streams 8 KiB at a time (connectrpc over urllib3's read(8192)).

    Unless the agent fills those reads, a command that prints little blocks
    ``commands.run(..., background=True)``, ``connect`` and ``pty.create`` until it ends.
    """
    started: list[Any] = []
    # Keep the handle: a collected one hands its half-read connection back to the pool.
    worker = threading.Thread(target=lambda: started.append(commands._start("sleep 30", None, "root", None)))
    worker.start()
    worker.join(3)  # the start event comes at once, unless the client is still waiting for 8 KiB
    assert started, "the start event did not arrive: stream messages must fill the sync SDK's 8 KiB reads"
    assert commands.kill(started[0].pid) is True
