"""Plain TCP host ports: the --host-ports option, the pure mapping and diff, allocation
that skips ports held elsewhere, and the forwarder on loopback against an echo server."""

from __future__ import annotations

import argparse
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from appliance.config import ConfigError, ListenAddress, add_serve_arguments, config_from_args, parse_host_ports
from controlplane.errors import BadRequest
from controlplane.lifecycle.service import LifecycleConfig, SandboxService
from controlplane.ports import parse_port
from controlplane.runtime.fake import FakeRuntime
from controlplane.store import Store
from gateway.hostports import HostPortForwarder, HostPortLimits, PortedSandbox, Target, plan, wanted

# -- --host-ports ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("40000-40099", (40000, 40099)),
        (" 1024 - 1024 ", (1024, 1024)),
        ("50000-65535", (50000, 65535)),
        ("off", None),
        ("OFF", None),
        ("", None),
    ],
)
def test_parse_host_ports_accepts(text: str, expected: tuple[int, int] | None) -> None:
    assert parse_host_ports(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("40000", "LOW-HIGH"),
        ("40000-", "LOW-HIGH"),
        ("a-b", "LOW-HIGH"),
        ("-1-10", "LOW-HIGH"),
        ("\uff14\uff10\uff10\uff10\uff10-40001", "LOW-HIGH"),  # full-width digits pass str.isdigit
        ("80-90", "1024 <= LOW"),
        ("40100-40000", "LOW <= HIGH"),
        ("60000-70000", "<= 65535"),
    ],
)
def test_parse_host_ports_refuses(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match="--host-ports") as info:
        parse_host_ports(text)
    assert says in str(info.value)


def test_host_ports_must_not_contain_the_gateway_port() -> None:
    listen = (ListenAddress("127.0.0.1", 8443), ListenAddress(None, 40050))
    with pytest.raises(ConfigError, match="listening port 40050"):
        parse_host_ports("40000-40099", listen)
    assert parse_host_ports("40000-40049", listen) == (40000, 40049)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser.parse_args(argv)


def test_host_ports_option_environment_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCALEBOX_HOST_PORTS", raising=False)
    # Above the kernel's ephemeral ports, which outgoing connections would take.
    assert config_from_args(_parse([])).host_ports == (61000, 61099)
    assert config_from_args(_parse(["--host-ports", "off"])).host_ports is None
    monkeypatch.setenv("SCALEBOX_HOST_PORTS", "41000-41009")
    assert config_from_args(_parse([])).host_ports == (41000, 41009)
    assert config_from_args(_parse(["--host-ports", "42000-42000"])).host_ports == (42000, 42000)
    with pytest.raises(ConfigError, match="listening port 41005"):
        config_from_args(_parse(["--listen", "41005"]))


# -- the pure mapping and diff ---------------------------------------------------------


def _sandbox(sid: str, host_ports: dict[int, int], *, running: bool = True) -> PortedSandbox:
    return PortedSandbox(id=sid, running=running, ip="127.0.0.1", host_ports=host_ports)


def test_wanted_maps_every_host_port_to_its_sandbox_and_container_port() -> None:
    sandboxes = [_sandbox("a", {40000: 5432, 40001: 6379}), _sandbox("b", {}), _sandbox("c", {40002: 5432})]
    assert wanted(sandboxes) == {40000: Target("a", 5432), 40001: Target("a", 6379), 40002: Target("c", 5432)}
    # A paused sandbox keeps its port: connections are refused, not rerouted.
    assert wanted([_sandbox("a", {40000: 1}, running=False)]) == {40000: Target("a", 1)}
    # Two claims to one port (allocation never makes them): the first listed keeps it.
    assert wanted([_sandbox("old", {40000: 1}), _sandbox("new", {40000: 2})]) == {40000: Target("old", 1)}


def test_plan_opens_closes_and_retargets() -> None:
    opened = {40000: Target("a", 1), 40001: Target("a", 2), 40002: Target("b", 3)}
    want = {40000: Target("a", 1), 40002: Target("c", 3), 40003: Target("c", 4)}
    changes = plan(want, opened)
    assert changes.open == {40003: Target("c", 4)}
    assert changes.close == {40001}
    assert changes.retarget == {40002: Target("c", 3)}
    assert not plan(want, want)
    assert plan({}, opened).close == set(opened)


# -- allocation skips ports that something else holds ----------------------------------


def _free_ports(count: int) -> list[int]:
    """`count` consecutive ports that are free on every interface now."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("0.0.0.0", 0))
            base = probe.getsockname()[1]
        if base + count > 65535:
            continue
        held: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                held.append(s)
                s.bind(("0.0.0.0", port))
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
        return list(range(base, base + count))
    raise RuntimeError("no run of free ports")


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Callable[[tuple[int, int]], SandboxService]]:
    store = Store(tmp_path / "db.sqlite")

    def make(span: tuple[int, int]) -> SandboxService:
        config = LifecycleConfig(instance_id="hp-test", agent_dir=tmp_path, host_ports=span)
        return SandboxService(store=store, runtime=FakeRuntime(), config=config)

    yield make
    store.close()


def test_allocation_skips_a_host_port_something_else_listens_on(
    service: Callable[[tuple[int, int]], SandboxService],
) -> None:
    low, mid, high = _free_ports(3)
    svc = service((low, high))
    any_port = parse_port({"port": 5432, "protocol": "tcp", "host_port": True}, "port")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", low))
        squatter.listen()
        assert [p["host_port"] for p in svc._declare([any_port])] == [mid]
        # Asked for by number, the port is given (the forwarder reports if it cannot bind).
        by_number = parse_port({"port": 5432, "protocol": "tcp", "host_port": low}, "port")
        assert [p["host_port"] for p in svc._declare([by_number])] == [low]
    # Free again: the lowest is handed out again.
    assert [p["host_port"] for p in svc._declare([any_port])] == [low]


def test_allocation_says_exhausted_when_every_free_port_is_held(
    service: Callable[[tuple[int, int]], SandboxService],
) -> None:
    [port] = _free_ports(1)
    svc = service((port, port))
    with socket.socket() as squatter:
        squatter.bind(("0.0.0.0", port))
        squatter.listen()
        with pytest.raises(BadRequest, match="taken") as info:
            svc._declare([parse_port({"port": 1, "protocol": "tcp", "host_port": True}, "port")])
    assert info.value.code == "host_ports_exhausted"


# -- the forwarder on loopback -----------------------------------------------------------


async def _echo(stream: trio.SocketStream) -> None:
    try:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _start_echo(nursery: trio.Nursery) -> int:
    """An echo server on loopback, standing in for a service in a sandbox; its port."""
    listeners = await nursery.start(partial(trio.serve_tcp, _echo, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


@dataclass
class Table:
    """A stand-in for the sandbox table: the forwarder reads it when its version changes."""

    sandboxes: list[PortedSandbox] = field(default_factory=list)
    version: int = 0

    def set(self, *sandboxes: PortedSandbox) -> None:
        self.sandboxes = list(sandboxes)
        self.version += 1


@dataclass
class Rig:
    table: Table
    forwarder: HostPortForwarder
    echo_port: int
    free: list[int]


@pytest.fixture
async def rig(nursery: trio.Nursery) -> AsyncIterator[Rig]:
    echo_port = await _start_echo(nursery)
    table = Table()
    forwarder = HostPortForwarder(
        sandboxes=lambda: table.sandboxes,
        version=lambda: table.version,
        hosts=["127.0.0.1"],
        limits=HostPortLimits(poll_interval=0.01, retry_interval=0.05, max_per_address=3),
    )
    await nursery.start(forwarder.run)
    yield Rig(table=table, forwarder=forwarder, echo_port=echo_port, free=_free_ports(2))


async def _connect(port: int) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", port)


async def _round_trip(port: int, message: bytes) -> bytes:
    stream = await _connect(port)
    async with stream:
        await stream.send_all(message)
        got = b""
        with trio.fail_after(5):
            while len(got) < len(message):
                data = await stream.receive_some(65536)
                if not data:
                    break
                got += data
        return got


async def _wait_for(predicate: Callable[[], Any], what: str, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


async def _refused(port: int) -> bool:
    try:
        stream = await _connect(port)
    except OSError:
        return True
    await stream.aclose()
    return False


async def _wait_refused(port: int) -> None:
    with trio.fail_after(5):
        while not await _refused(port):
            await trio.sleep(0.01)


async def _closed_by_peer(stream: trio.SocketStream) -> bool:
    """True once the other side has closed `stream` (EOF or reset)."""
    with trio.fail_after(5):
        try:
            return await stream.receive_some(1) == b""
        except trio.BrokenResourceError:
            return True


def _connections(log_events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in log_events if e["event"] == "gateway.connection"]


async def test_a_host_port_echoes_through_to_the_container_port_and_is_logged(
    rig: Rig, log_events: list[dict[str, Any]]
) -> None:
    host_port = rig.free[0]
    rig.table.set(_sandbox("sbx-a", {host_port: rig.echo_port}))
    await _wait_for(lambda: host_port in rig.forwarder.open_ports, "the host port to open")
    assert await _round_trip(host_port, b"hello, plain tcp") == b"hello, plain tcp"
    await _wait_for(lambda: _connections(log_events), "the access log line")
    [line] = _connections(log_events)
    assert line["mode"] == "host_port" and line["outcome"] == "ok"
    assert (line["sandbox"], line["port"], line["host_port"]) == ("sbx-a", rig.echo_port, host_port)
    assert line["bytes_in"] == line["bytes_out"] == len(b"hello, plain tcp")
    assert [e["host_port"] for e in log_events if e["event"] == "gateway.host_port_opened"] == [host_port]


async def test_undeclaring_closes_the_port_and_ends_its_open_connections(
    rig: Rig, log_events: list[dict[str, Any]]
) -> None:
    host_port = rig.free[0]
    rig.table.set(_sandbox("sbx-a", {host_port: rig.echo_port}))
    await _wait_for(lambda: host_port in rig.forwarder.open_ports, "the host port to open")
    held = await _connect(host_port)
    await held.send_all(b"ping")
    assert await held.receive_some(4) == b"ping"

    rig.table.set(_sandbox("sbx-a", {}))
    await _wait_refused(host_port)
    assert await _closed_by_peer(held)
    await held.aclose()

    # (Probes that raced the close in _wait_refused were refused with no sandbox named.)
    def served() -> list[dict[str, Any]]:
        return [e for e in _connections(log_events) if "sandbox" in e]

    await _wait_for(served, "the access log line")
    [line] = served()
    assert line["outcome"] == "host_port_released" and line["bytes_in"] == 4
    assert rig.forwarder.open_ports == {}


async def test_a_sandbox_that_is_not_running_gets_its_connections_closed(
    rig: Rig, log_events: list[dict[str, Any]]
) -> None:
    host_port = rig.free[0]
    rig.table.set(_sandbox("sbx-a", {host_port: rig.echo_port}, running=False))
    await _wait_for(lambda: host_port in rig.forwarder.open_ports, "the host port to open")
    stream = await _connect(host_port)
    async with stream:
        assert await _closed_by_peer(stream)
    await _wait_for(lambda: _connections(log_events), "the access log line")
    assert _connections(log_events)[0]["outcome"] == "sandbox_not_running"
    # Running again (resumed): the same listener serves it.
    rig.table.set(_sandbox("sbx-a", {host_port: rig.echo_port}))
    assert await _round_trip(host_port, b"back") == b"back"


async def test_a_sleeping_sandbox_is_woken_by_a_connection_that_is_then_served(
    nursery: trio.Nursery, log_events: list[dict[str, Any]]
) -> None:
    echo_port = await _start_echo(nursery)
    host_port = _free_ports(1)[0]
    table = Table()
    asleep = PortedSandbox(id="sbx-a", running=False, ip="127.0.0.1", host_ports={host_port: echo_port}, wakeable=True)
    woken: list[str] = []

    async def waker(sandbox_id: str) -> str | None:
        woken.append(sandbox_id)
        table.set(replace(asleep, running=True, wakeable=False))  # what the control plane's resume writes
        return None

    forwarder = HostPortForwarder(
        sandboxes=lambda: table.sandboxes,
        version=lambda: table.version,
        hosts=["127.0.0.1"],
        limits=HostPortLimits(poll_interval=0.01),
        waker=waker,
    )
    await nursery.start(forwarder.run)
    table.set(asleep)
    await _wait_for(lambda: host_port in forwarder.open_ports, "the host port to open")
    assert await _round_trip(host_port, b"wake up") == b"wake up"
    assert woken == ["sbx-a"]

    async def refusing(sandbox_id: str) -> str | None:
        return "no"

    forwarder.waker = refusing
    table.set(asleep)
    stream = await _connect(host_port)
    async with stream:
        assert await _closed_by_peer(stream)
    await _wait_for(lambda: any(e["outcome"] == "wake_failed" for e in _connections(log_events)), "the log line")


async def test_a_port_given_to_another_sandbox_ends_the_old_connections(rig: Rig) -> None:
    host_port = rig.free[0]
    rig.table.set(_sandbox("sbx-a", {host_port: rig.echo_port}))
    await _wait_for(lambda: host_port in rig.forwarder.open_ports, "the host port to open")
    old = await _connect(host_port)
    await old.send_all(b"x")
    assert await old.receive_some(1) == b"x"
    # Within one poll the first sandbox goes and a second is given its port.
    rig.table.set(_sandbox("sbx-b", {host_port: rig.echo_port}))
    assert await _closed_by_peer(old)
    await old.aclose()
    assert rig.forwarder.open_ports == {host_port: Target("sbx-b", rig.echo_port)}
    assert await _round_trip(host_port, b"new owner") == b"new owner"


async def test_nothing_listening_in_the_sandbox_closes_and_logs(rig: Rig, log_events: list[dict[str, Any]]) -> None:
    host_port, dead = rig.free
    rig.table.set(_sandbox("sbx-a", {host_port: dead}))
    await _wait_for(lambda: host_port in rig.forwarder.open_ports, "the host port to open")
    stream = await _connect(host_port)
    async with stream:
        assert await _closed_by_peer(stream)
    await _wait_for(lambda: _connections(log_events), "the access log line")
    assert _connections(log_events)[0]["outcome"] == "upstream_unavailable"


async def test_a_port_that_cannot_be_bound_is_logged_retried_and_spares_the_others(
    rig: Rig, log_events: list[dict[str, Any]]
) -> None:
    taken, fine = rig.free
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", taken))
    squatter.listen()
    try:
        rig.table.set(_sandbox("sbx-a", {taken: rig.echo_port, fine: rig.echo_port}))
        await _wait_for(lambda: fine in rig.forwarder.open_ports, "the bindable port to open")
        assert await _round_trip(fine, b"ok") == b"ok"
        failed = [e for e in log_events if e["event"] == "gateway.host_port_failed"]
        assert [(e["host_port"], e["sandbox"]) for e in failed] == [(taken, "sbx-a")]
        await trio.sleep(0.2)  # several retries: logged once, not at each
        assert len([e for e in log_events if e["event"] == "gateway.host_port_failed"]) == 1
    finally:
        squatter.close()
    # Once the other holder lets go, a retry takes it.
    await _wait_for(lambda: taken in rig.forwarder.open_ports, "the retry to bind")
    assert await _round_trip(taken, b"at last") == b"at last"


async def test_connections_per_client_address_are_capped(rig: Rig, log_events: list[dict[str, Any]]) -> None:
    host_port = rig.free[0]
    rig.table.set(_sandbox("sbx-a", {host_port: rig.echo_port}))
    await _wait_for(lambda: host_port in rig.forwarder.open_ports, "the host port to open")
    held = [await _connect(host_port) for _ in range(3)]
    for stream in held:  # each is being served
        await stream.send_all(b"1")
        assert await stream.receive_some(1) == b"1"
    extra = await _connect(host_port)
    assert await _closed_by_peer(extra)
    await extra.aclose()
    refused = [e for e in _connections(log_events) if e["outcome"] == "too_many_connections_from_address"]
    assert len(refused) == 1
    for stream in held:
        await stream.aclose()


async def test_cancelling_the_forwarder_closes_every_port_and_connection() -> None:
    async with trio.open_nursery() as nursery:
        echo_port = await _start_echo(nursery)
        [host_port] = _free_ports(1)
        sandboxes = [_sandbox("sbx-a", {host_port: echo_port})]
        forwarder = HostPortForwarder(sandboxes=lambda: sandboxes, version=lambda: 1, hosts=["127.0.0.1"])
        scope = trio.CancelScope()
        await nursery.start(_run_in, forwarder, scope)
        held = await _connect(host_port)
        await held.send_all(b"x")
        assert await held.receive_some(1) == b"x"
        scope.cancel()
        assert await _closed_by_peer(held)
        await held.aclose()
        assert await _refused(host_port)
        nursery.cancel_scope.cancel()


async def _run_in(forwarder: HostPortForwarder, scope: trio.CancelScope, *, task_status: trio.TaskStatus[None]) -> None:
    """Run the forwarder under `scope`, which the test cancels as shutdown would."""
    with scope:
        await forwarder.run(task_status=task_status)
