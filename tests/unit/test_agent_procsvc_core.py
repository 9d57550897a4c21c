"""The Process service's pure parts: exit statuses, fan-out with backpressure, the table, environment."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from agent.process.events import Data, End, end_from_exit_code
from agent.process.hub import Hub
from agent.process.spawn import DEFAULT_PATH, build_environ, resolve_cwd
from agent.process.table import ProcessTable

# Exit statuses


def test_exit_statuses_follow_go() -> None:
    assert end_from_exit_code(0) == End(0, True, "exit status 0", None)
    assert end_from_exit_code(3) == End(3, True, "exit status 3", "exit status 3")
    assert end_from_exit_code(-9) == End(-1, False, "signal: killed", "signal: killed")
    assert end_from_exit_code(-15).status == "signal: terminated"
    assert end_from_exit_code(-2).status == "signal: interrupt"


# Fan-out


class Wakes:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def drain(sub: object) -> list[object]:
    events = []
    while (event := sub.pop()) is not None:  # type: ignore[attr-defined]
        events.append(event)
    return events


def test_every_subscriber_gets_every_event_from_its_subscription_on() -> None:
    hub = Hub()
    first_wakes = Wakes()
    first = hub.subscribe(first_wakes)
    hub.publish(Data("stdout", b"a"))
    second = hub.subscribe(Wakes())
    hub.publish(Data("stderr", b"b"))
    hub.publish(Data("stdout", b"c"))
    assert drain(first) == [Data("stdout", b"a"), Data("stderr", b"b"), Data("stdout", b"c")]
    assert drain(second) == [Data("stderr", b"b"), Data("stdout", b"c")]
    assert first_wakes.count == 3
    assert first.pop() is None


def test_output_without_subscribers_is_dropped() -> None:
    hub = Hub()
    hub.publish(Data("stdout", b"lost"))
    late = hub.subscribe(Wakes())
    assert late.pop() is None
    sub = hub.subscribe(Wakes())
    hub.unsubscribe(sub)
    hub.unsubscribe(sub)  # twice is harmless
    assert hub.subscriber_count == 1


def test_end_reaches_present_and_later_subscribers() -> None:
    hub = Hub()
    sub = hub.subscribe(Wakes())
    hub.publish(Data("stdout", b"x"))
    end = end_from_exit_code(0)
    hub.finish(end)
    hub.finish(end_from_exit_code(1))  # only the first end counts
    assert drain(sub) == [Data("stdout", b"x"), end]
    later = hub.subscribe(Wakes())
    assert drain(later) == [end]
    assert hub.subscriber_count == 0
    with pytest.raises(RuntimeError):
        hub.publish(Data("stdout", b"after"))


def test_backpressure_pauses_until_every_queue_is_low() -> None:
    resumed = []
    hub = Hub(high_water=10, low_water=4, on_resume=lambda: resumed.append(True))
    fast = hub.subscribe(Wakes())
    slow = hub.subscribe(Wakes())
    assert hub.publish(Data("stdout", b"12345")) is False
    assert hub.publish(Data("stdout", b"67890")) is True  # 10 bytes queued: pause
    assert hub.paused
    drain(fast)
    assert resumed == []  # slow still holds 10 bytes
    slow.pop()
    assert resumed == []  # 5 > low water
    slow.pop()
    assert resumed == [True]
    assert not hub.paused


def test_a_subscriber_that_leaves_stops_holding_the_producer() -> None:
    resumed = []
    hub = Hub(high_water=4, low_water=0, on_resume=lambda: resumed.append(True))
    gone = hub.subscribe(Wakes())
    assert hub.publish(Data("pty", b"abcdef"))
    hub.unsubscribe(gone)
    assert resumed == [True]
    assert hub.publish(Data("pty", b"abcdef")) is False  # nobody listens: nothing held


def test_finish_clears_the_pause() -> None:
    hub = Hub(high_water=1, low_water=0)
    sub = hub.subscribe(Wakes())
    assert hub.publish(Data("stdout", b"ab"))
    hub.finish(end_from_exit_code(0))
    assert not hub.paused
    assert len(drain(sub)) == 2


# Table


@dataclass
class FakeProc:
    pid: int
    tag: str | None = None


def test_table_finds_running_by_pid_and_newest_by_tag() -> None:
    table: ProcessTable[FakeProc] = ProcessTable()
    a, b, c = FakeProc(10, "web"), FakeProc(11, "web"), FakeProc(12)
    for proc in (a, b, c):
        table.add(proc)
    assert table.find(pid=10) is a
    assert table.find(pid=99) is None
    assert table.find(tag="web") is b
    assert table.find(tag="nope") is None
    assert table.running() == [a, b, c]
    table.ended(b, now=0.0)
    assert table.find(tag="web") is a  # b no longer runs
    assert table.find(tag="web", include_ended=True) is b
    assert table.find(pid=11) is None
    assert table.find(pid=11, include_ended=True) is b
    assert table.running() == [a, c]
    assert table.is_running(a) and not table.is_running(b)


def test_ended_entries_expire_and_are_bounded() -> None:
    table: ProcessTable[FakeProc] = ProcessTable(retention=10.0, max_ended=2)
    procs = [FakeProc(pid) for pid in range(1, 6)]
    for proc in procs:
        table.add(proc)
    table.ended(procs[0], now=0.0)
    table.ended(procs[1], now=1.0)
    table.ended(procs[2], now=2.0)  # three ended, two kept: the oldest goes
    assert table.find(pid=1, include_ended=True) is None
    assert table.find(pid=2, include_ended=True) is procs[1]
    table.prune(now=11.5)  # pid 2 ended at 1.0: expired
    assert table.find(pid=2, include_ended=True) is None
    assert table.find(pid=3, include_ended=True) is procs[2]
    assert len(table) == 3  # 3 (ended), 4 and 5 (running)
    table.remove(procs[2])
    assert len(table) == 2


def test_a_reused_pid_replaces_the_ended_entry() -> None:
    table: ProcessTable[FakeProc] = ProcessTable()
    old, new = FakeProc(7, "x"), FakeProc(7, "y")
    table.add(old)
    table.ended(old, now=0.0)
    table.add(new)
    assert table.find(pid=7) is new
    assert table.find(tag="x", include_ended=True) is None
    table.remove(old)  # a stale reference removes nothing
    assert table.find(pid=7) is new
    table.ended(old, now=1.0)
    assert table.is_running(new)


# Environment and directory


@dataclass
class FakeUser:
    name: str = "alice"
    uid: int = 1000
    gid: int = 1000
    groups: list[int] | None = None
    home: str = "/home/alice"
    shell: str = "/bin/bash"


def test_environment_is_the_agents_less_scalebox_then_the_user_then_the_request() -> None:
    agent_env = {
        "SCALEBOX_ACCESS_TOKEN": "secret",
        "SCALEBOX_AGENT_PORT": "8888",
        "LANG": "C.UTF-8",
        "HOME": "/root",
        "USER": "root",
        "PWD": "/opt/scalebox",
    }
    env = build_environ(agent_env, FakeUser(), {"FOO": "bar", "LANG": "de_DE.UTF-8"})
    assert env == {
        "LANG": "de_DE.UTF-8",
        "PATH": DEFAULT_PATH,
        "HOME": "/home/alice",
        "USER": "alice",
        "LOGNAME": "alice",
        "SHELL": "/bin/bash",
        "FOO": "bar",
    }
    assert build_environ({"PATH": "/opt/bin"}, FakeUser(), {})["PATH"] == "/opt/bin"
    assert build_environ({}, FakeUser(), {"HOME": "/elsewhere"})["HOME"] == "/elsewhere"


def test_cwd_defaults_to_home_and_resolves_against_it() -> None:
    assert resolve_cwd(None, "/home/alice") == ("/home/alice", False)
    assert resolve_cwd("", "/home/alice") == ("/home/alice", False)
    assert resolve_cwd("/tmp/../srv", "/home/alice") == ("/srv", True)
    assert resolve_cwd("~", "/home/alice") == ("/home/alice", True)
    assert resolve_cwd("~/src", "/home/alice") == ("/home/alice/src", True)
    assert resolve_cwd("src", "/home/alice") == ("/home/alice/src", True)
