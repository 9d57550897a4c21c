"""End to end, with real Podman: the meter samples a sandbox that burns CPU and serves a
file through the gateway, and its usage, cost, invoice and statistics say so; another
user cannot see it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.appliance import Appliance, podman, stop_and_clean
from tests.e2e.helpers import container_name, create, start_in_sandbox, wait_for, wait_port

pytestmark = pytest.mark.podman

INTERVAL = 2
PRICES = {"currency": "EUR", "cpu_hour": 3.6, "memory_gb_hour": 0.5, "storage_gb_month": 10.0, "traffic_gb": 2.0}
FILE_BYTES = 300_000


@pytest.fixture
def metered_appliance(data_dir: Path) -> Iterator[Appliance]:
    prices = data_dir / "prices.json"
    prices.write_text(json.dumps(PRICES))
    # Two gateway processes: traffic reaches the meter from this process and from a worker's report.
    args = ("--meter-interval", str(INTERVAL), "--prices", str(prices), "--gateway-processes", "2")
    app = Appliance(data_dir=data_dir, extra_args=args)
    try:
        app.start()
        yield app
    finally:
        stop_and_clean(app)


def _usage(app: Appliance, api: httpx.Client, sid: str) -> dict[str, Any]:
    resp = api.get(f"{app.api_url}/sandboxes/{sid}/usage")
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()["data"]
    return data


def test_cpu_memory_and_traffic_are_metered_and_priced(metered_appliance: Appliance) -> None:
    app = metered_appliance
    with app.client() as api, app.client(api_key=None) as anon:
        sid = create(app, api)["sandbox_id"]
        # About 2.5 s of one CPU, busy-looping.
        podman("exec", container_name(sid), "python3", "-c",
               "import time\nend = time.time() + 2.5\nwhile time.time() < end: pass")  # fmt: skip
        start_in_sandbox(sid, "sh", "-c", f"mkdir -p /srv && head -c {FILE_BYTES} /dev/zero > /srv/blob && "
                         "cd /srv && exec python3 -m http.server 8000")  # fmt: skip
        wait_port(app, anon, sid, 8000)
        fetched = 0
        for _ in range(4):  # new connections: the kernel may hand them to either gateway process
            page = anon.get(app.url(f"8000-{sid}", "/blob"), headers={"Connection": "close"})
            assert page.status_code == 200 and len(page.content) == FILE_BYTES
            fetched += len(page.content)

        def metered() -> bool:
            used = _usage(app, api, sid)["usage"]
            return bool(used["cpu_seconds"] > 1 and used["bytes_out"] >= fetched)

        # A worker reports every 5 s; the meter writes every INTERVAL.
        wait_for(metered, 30, "the CPU and the traffic to be metered")
        time.sleep(2 * INTERVAL)
        data = _usage(app, api, sid)
        used = data["usage"]
        reports = [e for e in app.events("api.request") if e["path"] == "/v1/internal/traffic"]
        print(f"\nusage {used}, cost {data['cost']} EUR; worker reports {[e['status'] for e in reports]}")
        assert all(e["status"] == 200 for e in reports) and not app.events("gateway.traffic_report_failed")
        assert 1 < used["cpu_seconds"] < 30, used
        assert used["memory_gb_seconds"] > 0 and used["storage_gb_seconds"] > 0
        assert used["bytes_out"] >= fetched and used["bytes_in"] > 0

        # The cost is the usage times the price table given with --prices.
        items = {i["item"]: i for i in data["items"]}
        assert data["currency"] == "EUR"
        assert items["cpu"]["unit_price"] == PRICES["cpu_hour"]
        assert items["cpu"]["amount"] == pytest.approx(used["cpu_seconds"] / 3600 * 3.6, abs=1e-5)
        assert items["traffic"]["amount"] == pytest.approx(
            (used["bytes_in"] + used["bytes_out"]) / (1 << 30) * 2.0, abs=1e-5
        )
        assert data["cost"] == pytest.approx(sum(i["amount"] for i in data["items"]), abs=1e-6)
        assert data["cost"] > 0

        month = api.get(f"{app.api_url}/billing/current").json()["data"]
        assert month["status"] == "open" and month["currency"] == "EUR"
        assert month["total"] >= data["cost"] and month["usage"]["cpu_seconds"] >= used["cpu_seconds"]
        stats = api.get(f"{app.api_url}/sandboxes/stats").json()["data"]
        assert stats["running_sandboxes"] == 1 and stats["avg_cpu_usage"] > 0 and stats["total_uptime_hours"] > 0
        sessions = api.get(f"{app.api_url}/usage/sessions").json()["data"]["sessions"]
        assert [(s["sandbox_id"], s["running"]) for s in sessions] == [(sid, True)]

        # Another user sees none of it.
        made = api.post(f"{app.api_url}/users", json={"name": "bob"})
        assert made.status_code == 201, made.text
        with app.client(api_key=made.json()["data"]["first_key"]["api_key"]) as bob:
            assert bob.get(f"{app.api_url}/sandboxes/{sid}/usage").status_code == 404
            theirs = bob.get(f"{app.api_url}/usage").json()["data"]
            assert theirs["sandboxes"] == [] and theirs["cost"] == 0
