"""Wake on traffic: the reason the reaper records, the control plane's wake route, the
gateway's waker (gateway/wake.py) against a fake API on a unix socket and against the
real app served by hypercorn, and a Gateway resolving a Wake verdict."""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import h11
import hypercorn.config
import hypercorn.trio
import pytest
import trio
import trio.testing
from quart_trio import QuartTrio

from appliance.config import ConfigError, add_serve_arguments, config_from_args
from appliance.router import view_of
from appliance.workers import WorkerSettings
from controlplane.api.app import ApiSettings, create_app
from controlplane.api.schemas import HostLimits
from controlplane.apikeys import ensure_admin_key
from controlplane.lifecycle import service as service_module
from controlplane.lifecycle.service import LifecycleConfig, SandboxService
from controlplane.lifecycle.states import AUTO_PAUSE_REASON, State
from controlplane.runtime.fake import FakeRuntime
from controlplane.store import Store
from controlplane.tokens import mint_access_token
from gateway.access import Refuse, Stream, StreamVerdict, Verdict, Wake
from gateway.upstream import TcpAddress, UnixAddress
from gateway.wake import ApiWaker
from tests.unit.test_gateway_proxy import (
    DEADLINE,
    Peer,
    Upstream,
    echoed,
    fetch,
    forward_to,
    get,
    running_gateway,
    upstream,
)

SECRET = b"w" * 32


def token(sandbox_id: str) -> str:
    return mint_access_token(SECRET, sandbox_id)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # Short: a unix socket path must fit in 107 bytes, which pytest's tmp_path may not.
    path = Path(tempfile.mkdtemp(prefix="wake-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# -- the control plane: reason and route ------------------------------------------------


@dataclass
class Api:
    app: QuartTrio
    key: str
    runtime: FakeRuntime
    store: Store
    service: SandboxService

    async def call(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, api_key: bool = True
    ) -> tuple[int, dict[str, Any]]:
        all_headers = {"X-API-KEY": self.key} if api_key else {}
        options: dict[str, Any] = {"headers": {**all_headers, **(headers or {})}}
        response = await self.app.test_client().open(path, method=method, **options)
        assert response.content_type == "application/json"
        payload: dict[str, Any] = json.loads(await response.get_data(as_text=True))
        return response.status_code, payload

    async def wake(self, sandbox_id: str, access_token: str | None = None) -> tuple[int, dict[str, Any]]:
        headers = {"X-Access-Token": access_token if access_token is not None else token(sandbox_id)}
        return await self.call("POST", f"/v1/sandboxes/{sandbox_id}/wake", headers=headers, api_key=False)

    async def create(self, *, auto_pause: bool = True) -> str:
        status, payload = await self.call_json("POST", "/v1/sandboxes", {"auto_pause": auto_pause})
        assert status == 201, payload
        return str(payload["data"]["sandbox_id"])

    async def call_json(self, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        response = await self.app.test_client().open(path, method=method, headers={"X-API-KEY": self.key}, json=body)
        return response.status_code, json.loads(await response.get_data(as_text=True))

    async def time_out(self, sandbox_id: str) -> None:
        """Let its timeout pass, and the reaper run."""
        rec = self.store.get_sandbox(sandbox_id)
        assert rec is not None
        self.store.put_sandbox(replace(rec, timeout_at=0.0))
        await self.service.reap_once()

    def state(self, sandbox_id: str) -> tuple[State, str | None]:
        rec = self.store.get_sandbox(sandbox_id)
        assert rec is not None
        return rec.state, rec.reason


@pytest.fixture
async def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nursery: trio.Nursery) -> AsyncIterator[Api]:
    async def healthy(ip: str, port: int, *, deadline: float, **_: Any) -> bool:
        await trio.lowlevel.checkpoint()
        return True

    monkeypatch.setattr(service_module, "wait_until_healthy", healthy)
    store = Store(tmp_path / "db.sqlite")
    key = ensure_admin_key(store, tmp_path / "admin.key")
    assert key is not None
    runtime = FakeRuntime()
    service = SandboxService(
        store=store,
        runtime=runtime,
        config=LifecycleConfig(instance_id="test", agent_dir=tmp_path, reap_interval=3600),
    )
    await nursery.start(service.run)
    settings = ApiSettings(
        domain="sbx.localhost", public_port=8443, secret=SECRET, limits=HostLimits(max_cpu_count=4, max_memory_mb=4096)
    )
    app = create_app(service=service, store=store, settings=settings)
    yield Api(app=app, key=key, runtime=runtime, store=store, service=service)
    store.close()


async def test_the_reaper_records_auto_pause_and_a_resume_clears_it(api: Api) -> None:
    sid = await api.create()
    await api.time_out(sid)
    assert api.state(sid) == (State.PAUSED, AUTO_PAUSE_REASON)
    rec = api.store.get_sandbox(sid)
    assert rec is not None and view_of(rec).wakeable
    status, _ = await api.call("POST", f"/v1/sandboxes/{sid}/resume")
    assert status == 200
    assert api.state(sid) == (State.RUNNING, None)


async def test_a_manual_pause_is_not_wakeable(api: Api) -> None:
    sid = await api.create()
    # Even after an auto pause and a resume, a pause through the API says nothing of auto_pause.
    await api.time_out(sid)
    await api.call("POST", f"/v1/sandboxes/{sid}/resume")
    status, _ = await api.call("POST", f"/v1/sandboxes/{sid}/pause")
    assert status == 200
    state, reason = api.state(sid)
    assert state is State.PAUSED and reason != AUTO_PAUSE_REASON
    rec = api.store.get_sandbox(sid)
    assert rec is not None and not view_of(rec).wakeable

    status, payload = await api.wake(sid)
    assert status == 409 and payload["code"] == "not_wakeable"
    assert "through the API" in payload["message"]
    assert api.state(sid)[0] is State.PAUSED


async def test_wake_resumes_an_auto_paused_sandbox(api: Api) -> None:
    sid = await api.create()
    await api.time_out(sid)
    rec = api.store.get_sandbox(sid)
    assert rec is not None and rec.container_id is not None
    assert api.runtime.containers[rec.container_id].state == "paused"

    status, payload = await api.wake(sid)
    assert status == 200 and payload["success"] is True
    assert payload["data"] == {"sandbox_id": sid, "status": "running", "woken": True}
    assert api.runtime.containers[rec.container_id].state == "running"
    assert api.state(sid) == (State.RUNNING, None)
    after = api.store.get_sandbox(sid)
    assert after is not None and (after.timeout_at or 0) > 0  # a fresh lifetime

    # Running already: 200 at once, nothing done.
    calls = len(api.runtime.calls)
    status, payload = await api.wake(sid)
    assert status == 200 and payload["data"]["woken"] is False
    assert len(api.runtime.calls) == calls


async def test_wake_needs_the_sandbox_token_not_an_api_key(api: Api) -> None:
    sid = await api.create()
    await api.time_out(sid)
    for presented in ("", token(sid) + "x", token("sbx-another"), api.key):
        status, payload = await api.wake(sid, presented)
        assert status == 401 and payload["success"] is False and payload["error"] == "unauthorized"
        assert "X-Access-Token" in payload["message"]
    # An API key alone does not do either.
    status, _ = await api.call("POST", f"/v1/sandboxes/{sid}/wake")
    assert status == 401
    assert api.state(sid)[0] is State.PAUSED
    # The exception is that one route: the rest of /v1 still wants an API key.
    status, payload = await api.call(
        "POST", f"/v1/sandboxes/{sid}/resume", headers={"X-Access-Token": token(sid)}, api_key=False
    )
    assert status == 401 and payload["code"] == "missing_api_key"


async def test_wake_of_an_unknown_or_terminated_sandbox(api: Api) -> None:
    status, payload = await api.wake("sbx-nosuchsandbox")
    assert status == 404 and payload["success"] is False
    sid = await api.create(auto_pause=False)
    await api.time_out(sid)
    assert api.state(sid)[0] is State.TERMINATED
    status, payload = await api.wake(sid)
    assert status == 409 and "terminated" in payload["message"]


# -- the waker against a fake API ----------------------------------------------------------

Answer = Callable[[h11.Request], Awaitable[tuple[int, bytes]]]
OK = json.dumps({"success": True, "data": {}, "message": "ok"}).encode()


@dataclass
class FakeApi:
    path: str
    requests: list[h11.Request] = field(default_factory=list)


@asynccontextmanager
async def fake_api(directory: Path, answer: Answer) -> AsyncIterator[FakeApi]:
    api = FakeApi(str(directory / "api.sock"))
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(api.path)
    sock.listen()

    async def serve(stream: trio.SocketStream) -> None:
        peer = Peer(stream, h11.SERVER)
        try:
            got = await peer.read_request()
            assert got is not None
            api.requests.append(got[0])
            status, body = await answer(got[0])
            await peer.respond(status, body, [(b"content-type", b"application/json")])
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, serve, [trio.SocketListener(sock)])
        try:
            yield api
        finally:
            nursery.cancel_scope.cancel()


def waker_for(api: FakeApi | str, timeout: float = 5.0) -> ApiWaker:
    path = api if isinstance(api, str) else api.path
    return ApiWaker(api=UnixAddress(path), token_for=token, timeout=timeout)


async def answer_ok(_: h11.Request) -> tuple[int, bytes]:
    return 200, OK


async def test_the_waker_posts_with_the_sandbox_token(socket_dir: Path, log_events: list[dict[str, Any]]) -> None:
    with trio.fail_after(DEADLINE):
        async with fake_api(socket_dir, answer_ok) as api:
            assert await waker_for(api)("sbx-one") is None
    [request] = api.requests
    assert request.method == b"POST" and request.target == b"/v1/sandboxes/sbx-one/wake"
    assert (b"x-access-token", token("sbx-one").encode()) in list(request.headers)
    [line] = [e for e in log_events if e["event"] == "gateway.wake"]
    assert line["sandbox"] == "sbx-one" and line["outcome"] == "ok" and line["ms"] >= 0


async def test_concurrent_wakes_of_one_sandbox_share_one_call(
    socket_dir: Path, log_events: list[dict[str, Any]]
) -> None:
    release = trio.Event()

    async def slow(_: h11.Request) -> tuple[int, bytes]:
        await release.wait()
        return 200, OK

    results: list[str | None] = []
    with trio.fail_after(DEADLINE):
        async with fake_api(socket_dir, slow) as api:
            waker = waker_for(api)

            async def one(sandbox_id: str) -> None:
                results.append(await waker(sandbox_id))

            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(one, "sbx-a")
                nursery.start_soon(one, "sbx-b")  # another sandbox has its own call
                while len(api.requests) < 2:
                    await trio.sleep(0.01)
                await trio.testing.wait_all_tasks_blocked()
                release.set()
            assert results == [None] * 6
            assert sorted(r.target for r in api.requests) == [b"/v1/sandboxes/sbx-a/wake", b"/v1/sandboxes/sbx-b/wake"]
            # Once done, the next wake is a call of its own.
            assert await waker("sbx-a") is None
            assert len(api.requests) == 3
    lines = [e for e in log_events if e["event"] == "gateway.wake"]
    assert sorted(e["waiters"] for e in lines) == [0, 0, 4]


async def test_a_wake_past_its_bound_says_so(socket_dir: Path, log_events: list[dict[str, Any]]) -> None:
    async def never(_: h11.Request) -> tuple[int, bytes]:
        await trio.sleep_forever()
        raise AssertionError

    with trio.fail_after(DEADLINE):
        async with fake_api(socket_dir, never) as api:
            started = trio.current_time()
            failure = await waker_for(api, timeout=0.2)("sbx-slow")
            assert 0.2 <= trio.current_time() - started < 1.0
    assert failure == "sandbox sbx-slow did not wake within 0.2 s; retry shortly"
    assert [e["outcome"] for e in log_events if e["event"] == "gateway.wake"] == ["timeout"]


async def test_a_refusal_passes_on_the_control_planes_message(socket_dir: Path) -> None:
    async def refuse(_: h11.Request) -> tuple[int, bytes]:
        body = {"success": False, "error": "conflict", "message": "sandbox sbx-x is paused through the API"}
        return 409, json.dumps(body).encode()

    with trio.fail_after(DEADLINE):
        async with fake_api(socket_dir, refuse) as api:
            assert await waker_for(api)("sbx-x") == "sandbox sbx-x is paused through the API"


async def test_no_control_plane_is_a_message_not_a_crash(socket_dir: Path) -> None:
    with trio.fail_after(DEADLINE):
        failure = await waker_for(str(socket_dir / "missing.sock"))("sbx-x")
    assert failure is not None and "could not be asked to wake sandbox sbx-x" in failure


# -- the waker against the real app, served as the appliance serves it ------------------


async def test_the_waker_wakes_through_the_real_api(api: Api, socket_dir: Path) -> None:
    sid = await api.create()
    await api.time_out(sid)
    manual = await api.create()
    await api.call("POST", f"/v1/sandboxes/{manual}/pause")
    config = hypercorn.config.Config()
    config.bind = [f"unix:{socket_dir / 'api.sock'}"]
    config.accesslog = config.errorlog = None
    stop = trio.Event()
    with trio.fail_after(DEADLINE * 2):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(hypercorn.trio.serve, api.app, config, shutdown_trigger=stop.wait))
            waker = waker_for(str(socket_dir / "api.sock"))
            assert await waker(sid) is None
            assert api.state(sid)[0] is State.RUNNING
            failure = await waker(manual)
            assert failure is not None and "through the API" in failure
            assert api.state(manual)[0] is State.PAUSED
            stop.set()


# -- a Gateway resolving Wake --------------------------------------------------------------


class Sleeper:
    """A waker and the routers of one sleeping sandbox: Wake until woken, then `awake`."""

    def __init__(self, awake: Verdict, failure: str | None = None) -> None:
        self.awake = awake
        self.failure = failure
        self.woken = False
        self.calls = 0

    async def __call__(self, sandbox_id: str) -> str | None:
        assert sandbox_id == "sbx-test"
        self.calls += 1
        await trio.sleep(0.05)  # the resume takes a moment; the request is held meanwhile
        self.woken = self.failure is None
        return self.failure

    def router(self, host: str, token: str | None, agent_authorises: bool) -> Verdict:
        return self.awake if self.woken else Wake("sbx-test")


async def test_the_request_that_wakes_a_sandbox_is_answered() -> None:
    with trio.fail_after(DEADLINE):
        async with upstream() as up, running_gateway({}) as gw:
            sleeper = Sleeper(forward_to(up))
            gw.gateway.router, gw.gateway.waker = sleeper.router, sleeper
            client = await gw.client()
            response, body = await fetch(client, get("/hello"))
            assert response.status_code == 200 and echoed(body)["target"] == "/hello"
            assert sleeper.calls == 1
            # Awake now: the next request on the connection goes straight through.
            response, _ = await fetch(client, get("/again"))
            assert response.status_code == 200 and sleeper.calls == 1


async def test_a_failed_wake_is_a_503_with_its_reason_and_no_waker_a_409() -> None:
    with trio.fail_after(DEADLINE):
        async with running_gateway({}) as gw:
            sleeper = Sleeper(Refuse(404, "x", "unused"), failure="sandbox sbx-test did not wake within 1 s")
            gw.gateway.router, gw.gateway.waker = sleeper.router, sleeper
            response, body = await fetch(await gw.client(), get())
            assert response.status_code == 503
            assert json.loads(body)["message"] == "sandbox sbx-test did not wake within 1 s"
            gw.gateway.waker = None
            response, body = await fetch(await gw.client(), get())
            assert response.status_code == 409 and "paused" in json.loads(body)["message"]


async def raw_echo(up: Upstream, stream: trio.SocketStream) -> None:
    while data := await stream.receive_some(65536):
        await stream.send_all(data)


async def test_a_tls_stream_connection_wakes_its_sandbox() -> None:
    with trio.fail_after(DEADLINE):
        async with upstream(raw_echo) as up, running_gateway({}) as gw:
            stream = Stream(TcpAddress("127.0.0.1", up.port), "sbx-test", up.port, passthrough=False)
            sleeper = Sleeper(Refuse(404, "x", "unused"))

            def streams(sni: str) -> StreamVerdict:
                return stream if sleeper.woken else Wake("sbx-test")

            gw.gateway.streams, gw.gateway.waker = streams, sleeper
            tls = await gw.connect_tls("alpha.test")
            await tls.send_all(b"ping")
            assert await tls.receive_some(100) == b"ping"
            assert sleeper.calls == 1
            await tls.aclose()


# -- configuration ---------------------------------------------------------------------------


def _config(argv: list[str]) -> float:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return config_from_args(parser.parse_args(argv)).wake_timeout


def test_wake_timeout_option_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCALEBOX_WAKE_TIMEOUT", raising=False)
    assert _config([]) == 30.0
    assert _config(["--wake-timeout", "2.5"]) == 2.5
    monkeypatch.setenv("SCALEBOX_WAKE_TIMEOUT", "12")
    assert _config([]) == 12.0
    for bad in ("0", "-1", "nan", "inf", "301", "soon"):
        with pytest.raises(ConfigError, match="--wake-timeout"):
            _config(["--wake-timeout", bad])


def test_workers_get_the_wake_timeout() -> None:
    settings = WorkerSettings(
        index=1,
        listen_fds=[3],
        database="db",
        secret_path="key",
        api_socket="api.sock",
        domain="sbx.localhost",
        tls_cert="c",
        tls_key="k",
        drain_timeout=10.0,
        parent_pid=1,
        wake_timeout=7.0,
    )
    assert WorkerSettings.from_arg(settings.to_arg()).wake_timeout == 7.0
