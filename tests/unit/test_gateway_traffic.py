"""Traffic metering through a real gateway on loopback: bytes of requests and streams are
counted for the sandbox they went to, and a worker's report reaches the meter over the
API's unix socket (served by hypercorn, as in the appliance)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import h11
import hypercorn.config
import hypercorn.trio
import pytest
import trio

from appliance.router import make_router
from gateway.server import Gateway
from gateway.tls.identity import load_server_tls
from gateway.traffic import ApiTrafficSink, TrafficCounter, flush, report_traffic
from gateway.upstream import Pool, UnixAddress
from tests.unit.test_api_usage import SECRET as API_SECRET
from tests.unit.test_api_usage import Metered, metered  # noqa: F401 - the fixture
from tests.unit.test_gateway_ports import CERT_PEM, KEY_PEM, SECRET, SID, Rows, Running, host, port, raw_echo, record
from tests.unit.test_gateway_proxy import DEADLINE, Peer, fetch, quick_limits, recv_exactly, upstream
from tests.unit.test_hostports import Rig, _round_trip, _sandbox, _wait_for, rig  # noqa: F401 - the fixture


@asynccontextmanager
async def counting_gateway(rows: Rows, traffic: TrafficCounter) -> AsyncIterator[Running]:
    routers = make_router(
        domain="sbx.test",
        secret=SECRET,
        api_address=UnixAddress("/nonexistent"),
        record=lambda sid: rows.rec if sid == SID else None,
        version=lambda: rows.version,
    )
    gw = Gateway(
        router=routers.http,
        streams=routers.stream,
        tls=load_server_tls(CERT_PEM, KEY_PEM),
        pool=Pool(connect_timeout=1.0),
        limits=quick_limits(),
        traffic=traffic,
    )
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(gw.serve, listeners, shutdown)
        try:
            yield Running(listeners[0].socket.getsockname()[1], rows)
        finally:
            shutdown.set()


async def counted(traffic: TrafficCounter) -> dict[str, tuple[int, int]]:
    """The counts once there are some: a request is counted as its exchange ends, just after the answer."""
    with trio.fail_after(2):
        while not (counts := traffic.take()):
            await trio.sleep(0.01)
    return counts


async def test_bytes_of_requests_and_streams_are_counted_for_their_sandbox() -> None:
    traffic = TrafficCounter()
    body = b"x" * 50_000
    with trio.fail_after(DEADLINE):
        async with upstream() as up, raw_echo() as (tcp_port, _):
            rows = Rows(record(port(up.port), port(tcp_port, "tcp")))
            async with counting_gateway(rows, traffic) as gw:
                client = await gw.plain()
                request = h11.Request(
                    method="POST",
                    target="/upload",
                    headers=[(b"host", host(up.port)), (b"content-length", str(len(body)).encode())],
                )
                response, answer = await fetch(client, request, body)
                assert response.status_code == 200
                counts = await counted(traffic)
                assert set(counts) == {SID}
                bytes_in, bytes_out = counts[SID]
                assert len(body) < bytes_in < len(body) + 1000
                # The echo carries the body back, inside its JSON.
                assert len(answer) <= bytes_out < len(answer) + 1000 and bytes_out > len(body)
                assert traffic.take() == {}

                # A request for no sandbox is nobody's traffic.
                other = Peer(await trio.open_tcp_stream("127.0.0.1", gw.port), h11.CLIENT)
                response, _ = await fetch(other, h11.Request(method="GET", target="/", headers=[(b"host", b"x.y")]))
                assert response.status_code >= 400
                await trio.sleep(0.1)  # its log line, and a count if there were one, come after the answer
                assert traffic.take() == {}

                # A tcp port: counted when the connection ends.
                stream = await gw.tls(host(tcp_port).decode())
                await stream.send_all(b"PING" * 100)
                assert await recv_exactly(stream, 405) == b"echo:" + b"PING" * 100
                await stream.aclose()
                assert await counted(traffic) == {SID: (400, 405)}


async def test_a_report_failure_keeps_the_counts_for_the_next_one() -> None:
    traffic = TrafficCounter()
    traffic.add("sbx-a", 10, 20)
    sink = ApiTrafficSink(api=UnixAddress("/nonexistent/api.sock"), secret=SECRET, timeout=1.0)
    assert not await flush(traffic, sink)
    traffic.add("sbx-a", 1, 2)
    got: list[dict[str, tuple[int, int]]] = []

    async def record_sink(counts: dict[str, tuple[int, int]]) -> None:
        got.append(counts)

    assert await flush(traffic, record_sink)
    assert got == [{"sbx-a": (11, 22)}]
    # Nothing counted: nothing sent.
    assert await flush(traffic, record_sink) and len(got) == 1


@pytest.fixture
def socket_dir() -> AsyncIterator[Path]:
    # A unix socket's path must be short: pytest's tmp_path may be too long.
    with tempfile.TemporaryDirectory(prefix="sbx-") as name:
        yield Path(name)  # type: ignore[misc]


async def test_a_workers_report_reaches_the_meter_over_the_api_socket(metered: Metered, socket_dir: Path) -> None:  # noqa: F811
    sid = (await metered.api.create())["sandbox_id"]
    api_socket = socket_dir / "api.sock"
    config = hypercorn.config.Config()
    config.bind = [f"unix:{api_socket}"]
    config.accesslog = config.errorlog = None
    shutdown = trio.Event()
    traffic = TrafficCounter()
    sink = ApiTrafficSink(api=UnixAddress(str(api_socket)), secret=API_SECRET, timeout=5.0)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: hypercorn.trio.serve(metered.api.app, config, shutdown_trigger=shutdown.wait))
            while not api_socket.exists():
                await trio.sleep(0.01)
            nursery.start_soon(report_traffic, traffic, sink, 0.05)
            traffic.add(sid, 123, 4567)
            while traffic._counts or not metered.meter._traffic:
                await trio.sleep(0.02)
            # A sink with the wrong secret is refused, and keeps its counts.
            wrong = ApiTrafficSink(api=UnixAddress(str(api_socket)), secret=b"w" * 32, timeout=5.0)
            refused = TrafficCounter()
            refused.add(sid, 1, 1)
            assert not await flush(refused, wrong)
            assert refused.take() == {sid: (1, 1)}
            shutdown.set()
            nursery.cancel_scope.cancel()
    await metered.sample()
    _, payload = await metered.call("GET", f"/v1/sandboxes/{sid}/usage")
    assert (payload["data"]["usage"]["bytes_in"], payload["data"]["usage"]["bytes_out"]) == (123, 4567)
    assert json.dumps(payload)  # the envelope is plain JSON


async def test_a_host_ports_bytes_are_counted_for_its_sandbox(rig: Rig) -> None:  # noqa: F811
    host_port = rig.free[0]
    rig.table.set(_sandbox("sbx-a", {host_port: rig.echo_port}))
    await _wait_for(lambda: host_port in rig.forwarder.open_ports, "the host port to open")
    assert await _round_trip(host_port, b"x" * 1000) == b"x" * 1000
    assert await counted(rig.forwarder.traffic) == {"sbx-a": (1000, 1000)}
