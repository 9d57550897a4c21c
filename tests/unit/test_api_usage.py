"""Usage, billing and sandbox statistics through the API (Quart test client, fake runtime,
a meter driven by hand on a controllable clock)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import trio

from controlplane.api.app import ApiSettings, create_app
from controlplane.api.schemas import HostLimits
from controlplane.apikeys import ensure_admin_key
from controlplane.lifecycle import service as service_module
from controlplane.lifecycle.service import LifecycleConfig, SandboxService
from controlplane.runtime.base import DEFAULT_STORAGE_GB, RuntimeFailure
from controlplane.runtime.fake import FakeRuntime
from controlplane.store import Store
from controlplane.tokens import sign_report
from controlplane.usage.calc import GIB, Usage, hour_of, period_of
from controlplane.usage.meter import Meter
from controlplane.usage.prices import PriceTable, cost
from controlplane.usage.store import Bucketed
from tests.unit.test_api import Api
from tests.unit.test_api_accounts import make_user

SECRET = b"u" * 32
PRICES = PriceTable(currency="EUR", cpu_hour=3.6, memory_gb_hour=0.36, storage_gb_month=73.0, traffic_gb=1.0)
INTERVAL = 15.0


@dataclass
class Clock:
    now: float

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Metered:
    api: Api
    meter: Meter
    clock: Clock
    settings: ApiSettings

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, dict[str, Any]]:
        return await self.api.call(method, path, **kw)

    def container(self, sandbox_id: str) -> Any:
        rec = self.api.store.get_sandbox(sandbox_id)
        assert rec is not None and rec.container_id is not None
        return self.api.runtime.containers[rec.container_id]

    async def sample(self, seconds: float = INTERVAL) -> None:
        self.clock.advance(seconds)
        await self.meter.sample_once()


@pytest.fixture
async def metered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nursery: trio.Nursery) -> AsyncIterator[Metered]:
    async def healthy(ip: str, port: int, *, deadline: float, **_: Any) -> bool:
        await trio.lowlevel.checkpoint()
        return True

    monkeypatch.setattr(service_module, "wait_until_healthy", healthy)
    store = Store(tmp_path / "db.sqlite")
    key = ensure_admin_key(store, tmp_path / "admin.key")
    assert key is not None
    runtime = FakeRuntime()
    # The routes read the real time (this month, durations): the meter's clock starts there.
    clock = Clock(time.time())
    service = SandboxService(
        store=store,
        runtime=runtime,
        clock=clock,
        config=LifecycleConfig(instance_id="test", agent_dir=tmp_path, reap_interval=3600),
    )
    await nursery.start(service.run)
    meter = Meter(service=service, usage=store.usage, interval=INTERVAL, clock=clock)
    settings = ApiSettings(
        domain="sbx.localhost",
        public_port=8443,
        secret=SECRET,
        limits=HostLimits(max_cpu_count=4, max_memory_mb=4096),
        prices=PRICES,
    )
    app = create_app(service=service, store=store, settings=settings, meter=meter)
    api = Api(app=app, key=key, runtime=runtime, store=store, service=service)
    yield Metered(api=api, meter=meter, clock=clock, settings=settings)
    store.close()


def usage_of(data: dict[str, Any]) -> Usage:
    return Usage(**data["usage"])


async def test_cpu_memory_storage_and_traffic_are_metered_and_priced(metered: Metered) -> None:
    sbx = await metered.api.create(memory_mb=1024, storage_gb=4)
    sid = sbx["sandbox_id"]
    box = metered.container(sid)
    box.mem_used = 1 << 30
    box.cpu_seconds = 2.0
    await metered.sample()
    box.cpu_seconds = 5.0
    await metered.sample()
    # The container restarted: its counter began again at 0, and the 1.0 since then is new.
    box.cpu_seconds = 1.0
    metered.meter.add_traffic({sid: (100, 2000)})
    await metered.sample()

    status, payload = await metered.call("GET", f"/v1/sandboxes/{sid}/usage")
    assert status == 200, payload
    data = payload["data"]
    expected = Usage(
        cpu_seconds=6.0,
        memory_gb_seconds=45.0,
        storage_gb_seconds=4 * 45.0,
        bytes_in=100,
        bytes_out=2000,
    )
    assert usage_of(data) == expected
    assert data["cost"] == cost(expected, PRICES) and data["currency"] == "EUR"
    # 6 CPU-seconds at 3.6/hour: 0.006.
    assert {i["item"]: i["amount"] for i in data["items"]}["cpu"] == pytest.approx(0.006)

    status, payload = await metered.call("GET", "/v1/usage")
    assert status == 200
    assert usage_of(payload["data"]) == expected and payload["data"]["cost"] == data["cost"]
    assert [s["sandbox_id"] for s in payload["data"]["sandboxes"]] == [sid]

    # One row per sandbox per hour, however many samples.
    rows = metered.api.store._db.execute("SELECT COUNT(*) FROM usage_hours").fetchone()[0]
    assert rows <= 2


async def test_a_paused_sandbox_is_billed_storage_only_and_sessions_follow_the_lifecycle(metered: Metered) -> None:
    sid = (await metered.api.create())["sandbox_id"]
    metered.container(sid).cpu_seconds = 1.0
    await metered.sample()
    status, _ = await metered.call("POST", f"/v1/sandboxes/{sid}/pause")
    assert status == 200
    metered.container(sid).cpu_seconds = 99.0  # not possible while frozen; not billed if it were
    await metered.sample()
    status, payload = await metered.call("GET", f"/v1/sandboxes/{sid}/usage")
    used = usage_of(payload["data"])
    assert used.cpu_seconds == 1.0
    assert used.storage_gb_seconds == DEFAULT_STORAGE_GB * 2 * INTERVAL
    assert payload["data"]["sessions"] == 1

    metered.clock.advance(5)
    status, _ = await metered.call("POST", f"/v1/sandboxes/{sid}/resume")
    assert status == 200
    metered.clock.advance(7)
    status, payload = await metered.call("GET", "/v1/usage/sessions")
    assert status == 200
    sessions = payload["data"]["sessions"]
    assert [(s["running"], s["end_event"]) for s in sessions] == [(True, None), (False, "sandbox.paused")]
    assert sessions[1]["duration_seconds"] == INTERVAL and sessions[1]["cpu_count"] >= 1
    assert payload["data"]["pagination"]["total"] == 2
    status, payload = await metered.call("GET", "/v1/usage/sessions", query={"limit": "1", "page": "2"})
    assert [s["end_event"] for s in payload["data"]["sessions"]] == ["sandbox.paused"]

    status, _ = await metered.call("DELETE", f"/v1/sandboxes/{sid}")
    assert status == 202
    status, payload = await metered.call("GET", "/v1/usage/sessions", query={"sandbox_id": sid})
    assert [s["end_event"] for s in payload["data"]["sessions"]] == ["sandbox.terminated", "sandbox.paused"]


async def test_a_user_sees_only_their_own_usage(metered: Metered) -> None:
    sid = (await metered.api.create())["sandbox_id"]
    metered.container(sid).cpu_seconds = 3.0
    await metered.sample()
    _, alice_key = await make_user(metered.api, "alice")

    status, payload = await metered.call("GET", "/v1/usage", key=alice_key)
    assert status == 200 and payload["data"]["sandboxes"] == [] and usage_of(payload["data"]) == Usage()
    for path, query in [
        (f"/v1/sandboxes/{sid}/usage", None),
        ("/v1/usage/sessions", {"sandbox_id": sid}),
        ("/v1/usage/sessions", {"sandbox_id": "sbx-nosuchthing"}),
    ]:
        status, payload = await metered.call("GET", path, key=alice_key, query=query)
        assert status == 404, (path, payload)
    status, payload = await metered.call("GET", "/v1/usage/sessions", key=alice_key)
    assert payload["data"]["sessions"] == []
    status, payload = await metered.call("GET", "/v1/billing/current", key=alice_key)
    assert payload["data"]["total"] == 0 and usage_of(payload["data"]) == Usage()
    status, payload = await metered.call("GET", "/v1/sandboxes/stats", key=alice_key)
    assert payload["data"]["total_sandboxes"] == 0 and payload["data"]["total_cost"] == 0
    # The owner sees it all.
    status, payload = await metered.call("GET", "/v1/usage")
    assert usage_of(payload["data"]).cpu_seconds == 3.0


async def test_sandbox_stats_is_a_route_of_its_own(metered: Metered) -> None:
    first = (await metered.api.create())["sandbox_id"]
    second = (await metered.api.create())["sandbox_id"]
    metered.container(first).cpu_seconds = INTERVAL / 2  # half of one CPU for the interval
    metered.container(first).mem_used = 256 << 20
    await metered.sample()
    status, _ = await metered.call("DELETE", f"/v1/sandboxes/{second}")
    assert status == 202
    # /v1/sandboxes/<sandbox_id> does not take "stats" for an id.
    status, payload = await metered.call("GET", "/v1/sandboxes/stats")
    assert status == 200, payload
    data = payload["data"]
    assert (data["total_sandboxes"], data["running_sandboxes"], data["terminated_sandboxes"]) == (2, 1, 1)
    assert data["failed_sandboxes"] == 0
    assert data["total_uptime_hours"] > 0 and 0 < data["avg_cpu_usage"] <= 50
    assert 0 < data["avg_memory_usage"] < 100
    _, summary = await metered.call("GET", "/v1/usage")
    assert data["total_cost"] == summary["data"]["cost"] > 0


async def test_invoices_per_month_and_a_closed_month_is_final(metered: Metered) -> None:
    sid = (await metered.api.create())["sandbox_id"]
    metered.container(sid).cpu_seconds = 36.0
    await metered.sample()
    store = metered.api.store
    # Usage from a closed month, as the meter left it then.
    january = 1767225600  # 2026-01-01T00:00Z
    store.usage.record(
        [Bucketed(sandbox_id=sid, owner_id="usr-admin", hour=january, usage=Usage(cpu_seconds=3600))], {}
    )

    status, payload = await metered.call("GET", "/v1/billing/current")
    assert status == 200
    current = payload["data"]
    assert current["period"] == period_of(time.time()) and current["status"] == "open"
    _, summary = await metered.call("GET", "/v1/usage", query={"start": str(int(hour_of(time.time()) * 1000))})
    assert current["total"] == summary["data"]["cost"] > 0

    status, payload = await metered.call("GET", "/v1/billing/invoices/2026-01")
    assert status == 200
    closed = payload["data"]
    assert closed["status"] == "final" and closed["total"] == 3.6 and closed["usage"]["cpu_seconds"] == 3600
    status, payload = await metered.call("GET", "/v1/billing/invoices")
    assert [i["period"] for i in payload["data"]["invoices"]] == [current["period"], "2026-01"]

    # New prices: the open month is priced anew, the closed one stays as it was.
    dearer = create_app(
        service=metered.api.service,
        store=store,
        settings=replace(metered.settings, prices=replace(PRICES, cpu_hour=36.0)),
        meter=metered.meter,
    )
    again = replace(metered.api, app=dearer)
    _, payload = await again.call("GET", "/v1/billing/invoices/2026-01")
    assert payload["data"] == closed
    _, payload = await again.call("GET", "/v1/billing/current")
    assert payload["data"]["total"] > current["total"]


async def test_bad_query_parameters_are_refused_with_what_to_fix(metered: Metered) -> None:
    cases: list[tuple[str, dict[str, str] | None, int, str]] = [
        ("/v1/usage", {"start": "yesterday"}, 400, "start"),
        ("/v1/usage", {"start": "2026-02-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, 400, "before"),
        ("/v1/usage/sessions", {"page": "0"}, 400, "page"),
        ("/v1/usage/sessions", {"limit": "5000"}, 400, "limit"),
        ("/v1/billing/invoices/2026-13", None, 400, "month such as"),
        ("/v1/billing/invoices/march", None, 400, "YYYY-MM"),
        ("/v1/billing/invoices/1999-01", None, 404, "no usage"),
    ]
    for path, query, want, words in cases:
        status, payload = await metered.call("GET", path, query=query)
        assert status == want and words in payload["message"], (path, query, payload)
    status, _ = await metered.call("GET", "/v1/usage", key=None)
    assert status == 401


async def test_sessions_are_repaired_from_the_sandbox_table(metered: Metered) -> None:
    sid = (await metered.api.create())["sandbox_id"]
    usage = metered.api.store.usage
    # Events missed (the appliance was down): no open session for a running sandbox,
    # and one open for a sandbox that is long gone.
    usage.close_session(sid, at=metered.clock.now, event="sandbox.paused")
    usage.open_session(sandbox_id="sbx-gone", owner_id="usr-admin", cpu_count=1, memory_mb=512, at=1.0)
    await metered.sample()
    assert usage.open_session_of(sid) is not None
    assert usage.open_session_of("sbx-gone") is None


async def test_a_failed_stats_call_is_billed_at_the_next_pass(metered: Metered) -> None:
    sid = (await metered.api.create())["sandbox_id"]
    metered.container(sid).cpu_seconds = 2.0
    metered.api.runtime.fail_next("stats", RuntimeFailure("engine hiccup"))
    await metered.sample()
    metered.container(sid).cpu_seconds = 3.0
    await metered.sample()
    _, payload = await metered.call("GET", f"/v1/sandboxes/{sid}/usage")
    assert usage_of(payload["data"]).cpu_seconds == 3.0


# -- gateway reports ------------------------------------------------------------------------


async def report(metered: Metered, body: bytes, signature: str | None) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["X-Scalebox-Signature"] = signature
    return await metered.call("POST", "/v1/internal/traffic", raw=body, key=None, headers=headers)


async def test_a_signed_traffic_report_is_metered_and_nothing_else_is(metered: Metered) -> None:
    sid = (await metered.api.create())["sandbox_id"]
    body = json.dumps({"traffic": {sid: [1000, int(GIB)]}}).encode()
    signature = sign_report(SECRET, body, now=time.time(), nonce="n1")
    status, payload = await report(metered, body, signature)
    assert status == 200, payload
    # Replayed, altered, unsigned, stale, or signed with another key: refused.
    stale = sign_report(SECRET, body, now=time.time() - 600, nonce="n2")
    other = sign_report(b"x" * 32, body, now=time.time(), nonce="n3")
    for raw, sig in [(body, signature), (body.replace(b"1000", b"9000"), signature), (body, None), (body, stale)]:
        status, payload = await report(metered, raw, sig)
        assert status == 401, payload
    status, _ = await report(metered, body, other)
    assert status == 401
    bad = b'{"traffic": {"x": [1, -1]}}'
    status, payload = await report(metered, bad, sign_report(SECRET, bad, now=time.time(), nonce="n4"))
    assert status == 400 and "bytes_in" in payload["message"]

    await metered.sample()
    _, payload = await metered.call("GET", f"/v1/sandboxes/{sid}/usage")
    used = usage_of(payload["data"])
    assert (used.bytes_in, used.bytes_out) == (1000, int(GIB))
    assert {i["item"]: i["quantity"] for i in payload["data"]["items"]}["traffic"] == pytest.approx(1.0, rel=1e-5)
