"""The Process service's handlers, called with message objects, running real processes.

Each test runs its own event loop with a real Reaper on SIGCHLD, as the agent
does (there it reaps every child of PID 1; here every child of pytest, which
has none of its own while the loop runs).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.connect import ConnectError, Registry, RpcContext
from agent.init import Reaper
from agent.process import SERVICE, install
from agent.process.hub import HIGH_WATER
from agent.process.running import DRAIN_LIMIT
from agent.process.service import ProcessService, _keepalive_seconds
from agent.proto import (
    PTY,
    ConnectRequest,
    ListRequest,
    ProcessConfig,
    ProcessEvent,
    ProcessInput,
    ProcessSelector,
    SendInputRequest,
    SendSignalRequest,
    Signal,
    StartRequest,
    StreamInputRequest,
    StreamInputResponse,
    UpdateRequest,
)

STEP = 10.0  # seconds any single event may take: generous, since failures should not hang
AGENT_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SCALEBOX_ACCESS_TOKEN": "secret", "INHERITED": "yes"}


def run(body: Callable[[ProcessService], Awaitable[Any]], **options: Any) -> Any:
    async def main() -> Any:
        loop = asyncio.get_running_loop()
        reaper = Reaper()
        loop.add_signal_handler(signal.SIGCHLD, reaper.reap)
        service = ProcessService(reaper, environ=AGENT_ENV, **options)
        try:
            return await asyncio.wait_for(body(service), 60)
        finally:
            service.signal_all(signal.SIGKILL)
            await asyncio.sleep(0.05)
            loop.remove_signal_handler(signal.SIGCHLD)

    return asyncio.run(main())


def ctx(user: str = "root", headers: dict[str, str] | None = None) -> RpcContext:
    return RpcContext(procedure=f"/{SERVICE}/Test", user_name=user, headers=headers or {})


def start_request(
    cmd: str,
    *args: str,
    envs: dict[str, str] | None = None,
    cwd: str | None = None,
    pty: tuple[int, int] | None = None,
    tag: str | None = None,
) -> StartRequest:
    return StartRequest(
        process=ProcessConfig(cmd=cmd, args=list(args), envs=envs or {}, cwd=cwd),
        pty=PTY(size=PTY.Size(rows=pty[0], cols=pty[1])) if pty else None,
        tag=tag,
    )


def shell(script: str, **kwargs: Any) -> StartRequest:
    """What the SDKs' ``commands.run(script)`` sends."""
    return start_request("/bin/bash", "-l", "-c", script, **kwargs)


def pid_selector(pid: int) -> ProcessSelector:
    return ProcessSelector(pid=pid)


class Stream:
    """A process stream consumed as a client would, with a bound on every wait."""

    def __init__(self, responses: AsyncIterator[Any]) -> None:
        self._responses = responses
        self.pid = 0
        self.output: dict[str, bytes] = {"stdout": b"", "stderr": b"", "pty": b""}
        self.order: list[str] = []
        self.end: ProcessEvent.EndEvent | None = None
        self.keepalives = 0

    async def next(self) -> ProcessEvent:
        response = await asyncio.wait_for(self._responses.__anext__(), STEP)
        event = response.event
        kind = event.which_oneof("event")
        if kind == "data":
            stream = event.data.which_oneof("output")
            self.output[stream] += getattr(event.data, stream)
            self.order.append(stream)
        elif kind == "end":
            self.end = event.end
        elif kind == "keepalive":
            self.keepalives += 1
        return event

    async def started(self) -> int:
        event = await self.next()
        assert event.which_oneof("event") == "start"
        self.pid = event.start.pid
        assert self.pid > 0
        return self.pid

    async def until(self, stream: str, text: bytes) -> None:
        while text not in self.output[stream]:
            await self.next()
            assert self.end is None or text in self.output[stream], f"ended without {text!r}: {self.output}"

    async def finish(self) -> ProcessEvent.EndEvent:
        while self.end is None:
            await self.next()
        with pytest.raises(StopAsyncIteration):
            await self._responses.__anext__()  # the end is the last event
        return self.end

    async def close(self) -> None:
        await self._responses.aclose()  # type: ignore[attr-defined]


async def run_to_end(service: ProcessService, request: StartRequest, user: str = "root") -> Stream:
    stream = Stream(service.start(request, ctx(user)))
    await stream.started()
    await stream.finish()
    return stream


async def expect_error(awaitable: Awaitable[Any], code: str, text: str) -> ConnectError:
    with pytest.raises(ConnectError) as caught:
        await awaitable
    assert caught.value.code == code
    assert text in caught.value.message
    return caught.value


async def send_stdin(service: ProcessService, pid: int, data: bytes) -> None:
    await service.send_input(SendInputRequest(process=pid_selector(pid), input=ProcessInput(stdin=data)), ctx())


async def first_event(responses: AsyncIterator[Any]) -> Any:
    return await responses.__anext__()


# Start


def test_echo_hi_as_the_sdk_sends_it() -> None:
    async def body(service: ProcessService) -> None:
        stream = await run_to_end(service, shell("echo hi"))
        assert stream.output["stdout"] == b"hi\n"
        assert stream.end == ProcessEvent.EndEvent(exit_code=0, exited=True, status="exit status 0", error=None)

    run(body)


def test_stderr_and_a_non_zero_exit() -> None:
    async def body(service: ProcessService) -> None:
        stream = await run_to_end(service, shell("echo out; echo oops >&2; exit 3"))
        assert stream.output["stdout"] == b"out\n"
        assert stream.output["stderr"] == b"oops\n"
        assert stream.end == ProcessEvent.EndEvent(
            exit_code=3, exited=True, status="exit status 3", error="exit status 3"
        )

    run(body)


def test_envs_cwd_and_no_scalebox_variables(tmp_path: Path) -> None:
    script = 'echo "$FOO|$INHERITED|${SCALEBOX_ACCESS_TOKEN-unset}|$HOME|$USER|$LOGNAME"; pwd'

    async def body(service: ProcessService) -> None:
        stream = await run_to_end(service, shell(script, envs={"FOO": "bar"}, cwd=str(tmp_path)))
        assert stream.output["stdout"].decode().splitlines() == ["bar|yes|unset|/root|root|root", str(tmp_path)]
        home = await run_to_end(service, shell("pwd"))
        assert home.output["stdout"] == b"/root\n"

    run(body)


def test_a_missing_cwd_is_an_error() -> None:
    async def body(service: ProcessService) -> None:
        responses = service.start(shell("true", cwd="/no/such/dir"), ctx())
        await expect_error(first_event(responses), "invalid_argument", "no such file or directory")
        responses = service.start(shell("true", cwd="/etc/passwd"), ctx())
        await expect_error(first_event(responses), "invalid_argument", "not a directory")

    run(body)


def test_a_command_that_cannot_be_executed_is_an_error() -> None:
    async def body(service: ProcessService) -> None:
        responses = service.start(start_request("/no/such/program"), ctx())
        await expect_error(first_event(responses), "invalid_argument", "No such file or directory")
        responses = service.start(start_request(""), ctx())
        await expect_error(first_event(responses), "invalid_argument", "cmd is required")

    run(body)


def test_runs_as_the_selected_user() -> None:
    async def body(service: ProcessService) -> None:
        stream = await run_to_end(service, shell("id -u; id -g; id -G; echo $HOME; pwd", cwd="/tmp"), user="nobody")
        assert stream.output["stdout"].decode().split() == ["65534", "65534", "65534", "/nonexistent", "/tmp"]
        homeless = await run_to_end(service, shell("pwd"), user="nobody")
        assert homeless.output["stdout"] == b"/\n"  # its home does not exist: it starts in /
        forbidden = service.start(shell("true", cwd="/root"), ctx("nobody"))
        await expect_error(first_event(forbidden), "permission_denied", "permission denied")
        unknown = service.start(shell("true"), ctx("no-such-user"))
        await expect_error(first_event(unknown), "invalid_argument", "no-such-user")

    run(body)


def test_large_output_is_not_lost_and_memory_stays_bounded() -> None:
    size = 10_000_000

    async def body(service: ProcessService) -> None:
        fast = Stream(service.start(shell(f"read go; head -c {size} /dev/zero; echo done >&2", tag="big"), ctx()))
        pid = await fast.started()
        slow = Stream(service.connect(ConnectRequest(process=ProcessSelector(tag="big")), ctx()))
        assert await slow.started() == pid
        await send_stdin(service, pid, b"go\n")
        proc = service._table.find(pid=pid)
        assert proc is not None
        most_pending = 0
        slow_task = asyncio.ensure_future(_slowly(slow))
        while fast.end is None:
            await fast.next()
            most_pending = max([most_pending, *(s.pending for s in proc.hub._subscribers)])
        await slow_task
        for stream in (fast, slow):
            assert len(stream.output["stdout"]) == size
            assert stream.output["stderr"] == b"done\n"
            assert stream.order[-1] == "stderr"  # written after the last stdout byte, read after it
            assert stream.end is not None and stream.end.exit_code == 0
        assert most_pending <= HIGH_WATER + DRAIN_LIMIT

    run(body)


async def _slowly(stream: Stream) -> None:
    while stream.end is None:
        await stream.next()
        await asyncio.sleep(0.001)


def test_keepalives_while_idle() -> None:
    assert _keepalive_seconds(ctx()) == 50.0
    assert _keepalive_seconds(ctx(headers={"keepalive-ping-interval": "5"})) == 5.0
    # The Python SDK's 30 s request timeout is also its read timeout: stay well within it.
    assert _keepalive_seconds(ctx(headers={"connect-timeout-ms": "30000"})) == 15.0

    async def body(service: ProcessService) -> None:
        stream = Stream(service.start(shell("sleep 1.2; echo late"), ctx(headers={"keepalive-ping-interval": "1"})))
        await stream.started()
        await stream.finish()
        assert stream.keepalives == 1
        assert stream.output["stdout"] == b"late\n"

    run(body)


def test_the_end_waits_for_the_output_but_not_for_background_jobs() -> None:
    async def body(service: ProcessService) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        stream = await run_to_end(service, shell("sleep 30 & echo started"))
        assert loop.time() - started < 5
        assert stream.output["stdout"] == b"started\n"
        assert stream.end is not None and stream.end.exit_code == 0
        os.killpg(stream.pid, signal.SIGKILL)  # the sleep, still in the command's process group

    run(body)


# Input


def test_send_input_to_stdin_and_kill() -> None:
    async def body(service: ProcessService) -> None:
        stream = Stream(service.start(start_request("/bin/cat"), ctx()))
        pid = await stream.started()
        for chunk in (b"hello\n", b"world\n"):
            await send_stdin(service, pid, chunk)
        await stream.until("stdout", b"hello\nworld\n")
        await service.send_signal(SendSignalRequest(process=pid_selector(pid), signal=Signal.SIGNAL_SIGKILL), ctx())
        end = await stream.finish()
        assert end == ProcessEvent.EndEvent(exit_code=-1, exited=False, status="signal: killed", error="signal: killed")

    run(body)


def test_sigterm_reaches_the_whole_group() -> None:
    async def body(service: ProcessService) -> None:
        stream = Stream(service.start(shell("sleep 30; echo not reached", tag="t"), ctx()))
        await stream.started()
        await asyncio.sleep(0.2)  # let bash start the sleep
        await service.send_signal(
            SendSignalRequest(process=ProcessSelector(tag="t"), signal=Signal.SIGNAL_SIGTERM), ctx()
        )
        end = await stream.finish()
        assert (end.exit_code, end.status) == (-1, "signal: terminated")
        assert stream.output["stdout"] == b""

    run(body)


def test_stream_input() -> None:
    async def requests(pid: int) -> AsyncIterator[StreamInputRequest]:
        yield StreamInputRequest(start=StreamInputRequest.StartEvent(process=pid_selector(pid)))
        yield StreamInputRequest(data=StreamInputRequest.DataEvent(input=ProcessInput(stdin=b"one\n")))
        yield StreamInputRequest(keepalive=StreamInputRequest.KeepAlive())
        yield StreamInputRequest(data=StreamInputRequest.DataEvent(input=ProcessInput(stdin=b"two\n")))

    async def no_start() -> AsyncIterator[StreamInputRequest]:
        yield StreamInputRequest(data=StreamInputRequest.DataEvent(input=ProcessInput(stdin=b"x")))

    async def body(service: ProcessService) -> None:
        stream = Stream(service.start(shell("head -n 2"), ctx()))
        pid = await stream.started()
        assert await service.stream_input(requests(pid), ctx()) == StreamInputResponse()
        await stream.finish()
        assert stream.output["stdout"] == b"one\ntwo\n"
        await expect_error(service.stream_input(no_start(), ctx()), "invalid_argument", "start event")

    run(body)


def test_input_to_a_process_that_closed_its_stdin() -> None:
    async def body(service: ProcessService) -> None:
        stream = Stream(service.start(shell("exec 0<&-; sleep 30"), ctx()))
        pid = await stream.started()
        # Wait for the shell to have closed its stdin (a fixed sleep races a loaded machine).
        for _ in range(500):
            if not os.path.exists(f"/proc/{pid}/fd/0"):
                break
            await asyncio.sleep(0.01)
        request = SendInputRequest(process=pid_selector(pid), input=ProcessInput(stdin=b"x"))
        await expect_error(service.send_input(request, ctx()), "failed_precondition", "no more input")

    run(body)


# PTY


def test_pty_is_the_controlling_terminal_with_the_requested_size() -> None:
    async def body(service: ProcessService) -> None:
        script = "tty; stty size; echo $TERM; [ -t 0 ] && echo interactive"
        stream = await run_to_end(service, shell(script, pty=(30, 100), envs={"TERM": "xterm-256color"}))
        lines = stream.output["pty"].decode().splitlines()
        assert lines[0].startswith("/dev/pts/")
        assert lines[1:] == ["30 100", "xterm-256color", "interactive"]
        assert stream.output["stdout"] == stream.output["stderr"] == b""
        as_nobody = await run_to_end(service, shell('stat -c %u "$(tty)"', cwd="/tmp", pty=(24, 80)), user="nobody")
        assert as_nobody.output["pty"] == b"65534\r\n"  # its own terminal

    run(body)


def test_pty_input_resize_and_exit() -> None:
    async def body(service: ProcessService) -> None:
        # What the SDKs' pty.create sends.
        request = start_request("/bin/bash", "-i", "-l", envs={"TERM": "xterm-256color"}, pty=(24, 80))
        stream = Stream(service.start(request, ctx()))
        pid = await stream.started()

        async def type_line(line: bytes) -> None:
            await service.send_input(SendInputRequest(process=pid_selector(pid), input=ProcessInput(pty=line)), ctx())

        await type_line(b"stty size\n")
        await stream.until("pty", b"24 80")
        await service.update(UpdateRequest(process=pid_selector(pid), pty=PTY(size=PTY.Size(rows=40, cols=120))), ctx())
        await type_line(b"stty size\n")
        await stream.until("pty", b"40 120")
        await type_line(b"exit 5\n")
        end = await stream.finish()
        assert (end.exit_code, end.status) == (5, "exit status 5")

    run(body)


def test_pty_operations_on_a_process_without_one() -> None:
    async def body(service: ProcessService) -> None:
        stream = Stream(service.start(start_request("/bin/cat"), ctx()))
        pid = await stream.started()
        typed = SendInputRequest(process=pid_selector(pid), input=ProcessInput(pty=b"x"))
        await expect_error(service.send_input(typed, ctx()), "failed_precondition", "no pty")
        resize = UpdateRequest(process=pid_selector(pid), pty=PTY(size=PTY.Size(rows=1, cols=1)))
        await expect_error(service.update(resize, ctx()), "failed_precondition", "no pty")

    run(body)


# Connect, List, selectors


def test_connect_by_tag_from_a_second_consumer() -> None:
    async def body(service: ProcessService) -> None:
        first = Stream(service.start(shell('read line; echo "got $line"', tag="job"), ctx()))
        pid = await first.started()
        second = Stream(service.connect(ConnectRequest(process=ProcessSelector(tag="job")), ctx()))
        assert await second.started() == pid
        await send_stdin(service, pid, b"x\n")
        for stream in (first, second):
            await stream.finish()
            assert stream.output["stdout"] == b"got x\n"
            assert stream.end is not None and stream.end.exit_code == 0

    run(body)


def test_list_shows_running_processes() -> None:
    async def body(service: ProcessService) -> None:
        assert (await service.list(ListRequest(), ctx())).processes == []
        stream = Stream(service.start(shell("read x", envs={"A": "1"}, cwd="/tmp", tag="lister"), ctx()))
        pid = await stream.started()
        [info] = (await service.list(ListRequest(), ctx())).processes
        assert (info.pid, info.tag) == (pid, "lister")
        assert info.config == ProcessConfig(cmd="/bin/bash", args=["-l", "-c", "read x"], envs={"A": "1"}, cwd="/tmp")
        await send_stdin(service, pid, b"\n")
        await stream.finish()
        assert (await service.list(ListRequest(), ctx())).processes == []

    run(body)


def test_unknown_processes_are_not_found() -> None:
    async def body(service: ProcessService) -> None:
        unknown = pid_selector(4_000_000)
        connect = service.connect(ConnectRequest(process=unknown), ctx())
        await expect_error(first_event(connect), "not_found", "not found")
        by_tag = ConnectRequest(process=ProcessSelector(tag="nope"))
        await expect_error(first_event(service.connect(by_tag, ctx())), "not_found", "not found")
        kill = SendSignalRequest(process=unknown, signal=Signal.SIGNAL_SIGKILL)
        await expect_error(service.send_signal(kill, ctx()), "not_found", "not found")
        typed = SendInputRequest(process=unknown, input=ProcessInput(stdin=b"x"))
        await expect_error(service.send_input(typed, ctx()), "not_found", "not found")
        await expect_error(service.update(UpdateRequest(process=unknown), ctx()), "not_found", "not found")
        await expect_error(service.update(UpdateRequest(), ctx()), "invalid_argument", "selector")
        no_signal = SendSignalRequest(process=unknown)
        await expect_error(service.send_signal(no_signal, ctx()), "not_found", "not found")

    run(body)


def test_a_signal_is_required() -> None:
    async def body(service: ProcessService) -> None:
        stream = Stream(service.start(start_request("/bin/cat"), ctx()))
        pid = await stream.started()
        request = SendSignalRequest(process=pid_selector(pid))
        await expect_error(service.send_signal(request, ctx()), "invalid_argument", "SIGKILL")

    run(body)


# Disconnects


def test_a_process_outlives_its_client_and_its_end_is_kept_for_a_while(tmp_path: Path) -> None:
    marker = tmp_path / "marker"

    async def body(service: ProcessService) -> None:
        stream = Stream(service.start(shell(f'read line; echo "$line" > {marker}; echo unseen; exit 4'), ctx()))
        pid = await stream.started()
        await stream.close()  # the client went away
        assert [p.pid for p in (await service.list(ListRequest(), ctx())).processes] == [pid]
        await send_stdin(service, pid, b"hi\n")
        for _ in range(200):
            if not (await service.list(ListRequest(), ctx())).processes:
                break
            await asyncio.sleep(0.02)
        assert marker.read_text() == "hi\n"
        # It ended: no input or signal finds it, but a Connect still learns how it ended
        # (not the output it printed meanwhile), as often as asked, for a while.
        kill = SendSignalRequest(process=pid_selector(pid), signal=Signal.SIGNAL_SIGKILL)
        await expect_error(service.send_signal(kill, ctx()), "not_found", "not found")
        for _ in range(2):
            late = Stream(service.connect(ConnectRequest(process=pid_selector(pid)), ctx()))
            assert await late.started() == pid
            end = await late.finish()
            assert end.exit_code == 4
            assert late.output["stdout"] == b""
        await asyncio.sleep(0.5)
        again = service.connect(ConnectRequest(process=pid_selector(pid)), ctx())
        await expect_error(first_event(again), "not_found", "not found")

    run(body, ended_retention=0.5)


def test_a_closed_client_ends_its_stream_only() -> None:
    async def body(service: ProcessService) -> None:
        call = ctx()
        stream = Stream(service.start(start_request("/bin/cat"), call))
        pid = await stream.started()
        pending = asyncio.ensure_future(stream.next())
        await asyncio.sleep(0.05)
        call.closed.set()
        with pytest.raises(StopAsyncIteration):
            await pending
        proc = service._table.find(pid=pid)
        assert proc is not None and proc.hub.subscriber_count == 0
        await send_stdin(service, pid, b"x")

    run(body)


# Registration and resources


def test_install_registers_the_process_service() -> None:
    registry = Registry()
    install(registry, Reaper())
    assert registry.procedures == [
        f"/{SERVICE}/{name}"
        for name in sorted(["Connect", "List", "SendInput", "SendSignal", "Start", "StreamInput", "Update"])
    ]


def test_no_file_descriptors_are_left_behind() -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def body(service: ProcessService) -> None:
        await run_to_end(service, shell("echo warm-up"))
        before = open_fds()
        await run_to_end(service, shell("echo a; echo b >&2"))
        await run_to_end(service, shell("tty", pty=(24, 80)))
        stream = Stream(service.start(start_request("/bin/cat"), ctx()))
        pid = await stream.started()
        await service.send_signal(SendSignalRequest(process=pid_selector(pid), signal=Signal.SIGNAL_SIGKILL), ctx())
        await stream.finish()
        assert open_fds() == before

    run(body)
