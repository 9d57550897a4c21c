"""End to end, with real Podman: a sandbox that auto_pause put to sleep is woken by a
request for it, and that same request is answered; one paused through the API is not."""

from __future__ import annotations

import statistics
import time

import httpx
import pytest

from tests.e2e.appliance import Appliance
from tests.e2e.helpers import create, start_in_sandbox, wait_for, wait_port

pytestmark = pytest.mark.podman

# Short, so the reaper pauses it soon; a woken sandbox gets this lifetime again.
LIFETIME = 4
WAKES = 4


def _status(app: Appliance, api: httpx.Client, sid: str) -> str:
    status: str = api.get(f"{app.api_url}/sandboxes/{sid}/status").json()["data"]["status"]
    return status


def _serve_page(app: Appliance, api: httpx.Client, anon: httpx.Client, sid: str) -> None:
    start_in_sandbox(sid, "sh", "-c", f"mkdir -p /srv && echo awake-{sid} > /srv/index.html && "
                     "cd /srv && exec python3 -m http.server 8000")  # fmt: skip
    wait_port(app, anon, sid, 8000)


def test_a_request_wakes_an_auto_paused_sandbox_and_is_answered(appliance: Appliance) -> None:
    with appliance.client() as api, appliance.client(api_key=None) as anon:
        sid = create(appliance, api, auto_pause=True)["sandbox_id"]
        _serve_page(appliance, api, anon, sid)
        api.post(f"{appliance.api_url}/sandboxes/{sid}/timeout", json={"timeout": LIFETIME})

        took: list[float] = []
        for _ in range(WAKES):
            wait_for(lambda: _status(appliance, api, sid) == "paused", LIFETIME + 20, "the reaper to pause it")
            assert appliance.containers()[0]["State"] == "paused"
            reason = api.get(f"{appliance.api_url}/sandboxes/{sid}").json()["data"]["reason"]
            assert reason == "auto_pause"

            started = time.monotonic()
            page = anon.get(appliance.url(f"8000-{sid}", "/index.html"), headers={"Connection": "close"})
            took.append(time.monotonic() - started)
            assert page.status_code == 200, page.text
            assert page.text == f"awake-{sid}\n"
            # Running again, with a fresh lifetime (which lets the reaper pause it for the next round).
            assert _status(appliance, api, sid) == "running"
            assert appliance.containers()[0]["State"] == "running"

        wakes = [e for e in appliance.events("gateway.wake") if e["sandbox"] == sid]
        assert len(wakes) == WAKES and all(e["outcome"] == "ok" for e in wakes)
        ms = [round(t * 1000) for t in took]
        in_gateway = [(e["ms"], e["worker"]) for e in wakes]
        print(f"\nwake + request: median {statistics.median(ms)} ms of {ms}; gateway.wake (ms, worker): {in_gateway}")


def test_a_manually_paused_sandbox_stays_paused(appliance: Appliance) -> None:
    with appliance.client() as api, appliance.client(api_key=None) as anon:
        sid = create(appliance, api, auto_pause=True)["sandbox_id"]
        _serve_page(appliance, api, anon, sid)
        paused = api.post(f"{appliance.api_url}/sandboxes/{sid}/pause")
        assert paused.status_code == 200 and paused.json()["data"]["reason"] != "auto_pause"

        refused = anon.get(appliance.url(f"8000-{sid}", "/index.html"))
        assert refused.status_code == 409 and "paused" in refused.json()["message"]
        assert _status(appliance, api, sid) == "paused"
        assert appliance.containers()[0]["State"] == "paused"

        # The wake route itself refuses too, even with the sandbox's token.
        token = api.get(f"{appliance.api_url}/sandboxes/{sid}").json()["data"]["envd_access_token"]
        woke = anon.post(f"{appliance.api_url}/sandboxes/{sid}/wake", headers={"X-Access-Token": token})
        assert woke.status_code == 409 and woke.json()["code"] == "not_wakeable"
        assert _status(appliance, api, sid) == "paused"
        assert not [e for e in appliance.events("gateway.wake") if e["sandbox"] == sid]
