"""End to end, with real Podman: the /v1 lifecycle and the gateway in front of sandboxes."""

from __future__ import annotations

import pytest

from tests.e2e.appliance import Appliance
from tests.e2e.helpers import copy_into, create, start_in_sandbox, wait_for, wait_port, websocket_echo

pytestmark = pytest.mark.podman


def test_create_reach_agent_and_services_then_delete(appliance: Appliance) -> None:
    with appliance.client() as api, appliance.client(api_key=None) as anon:
        sbx = create(appliance, api, metadata={"suite": "e2e"}, cpu_count=1, memory_mb=256)
        sid, token = sbx["sandbox_id"], sbx["envd_access_token"]
        assert sbx["status"] == "running" and sbx["started_at"]
        assert sbx["sandbox_domain"] == f"{sid}.sbx.localhost:{appliance.port}"
        [container] = appliance.containers()
        assert container["Labels"]["io.scalebox.sandbox-id"] == sid

        # The agent, through the gateway by its sandbox domain: token required.
        ok = anon.get(appliance.url(sid, "/health"), headers={"X-Access-Token": token})
        assert ok.status_code == 204
        denied = anon.get(appliance.url(sid, "/health"))
        assert denied.status_code == 401
        assert denied.json()["success"] is False and "X-Access-Token" in denied.json()["message"]
        wrong = anon.get(appliance.url(sid, "/health"), headers={"X-Access-Token": token + "x"})
        assert wrong.status_code == 401

        # Nothing on the port yet: a 502 that names it.
        missing = anon.get(appliance.url(f"8000-{sid}"))
        assert missing.status_code == 502 and "port 8000" in missing.json()["message"]

        # A web server started inside is served on <port>-<id>.
        start_in_sandbox(sid, "sh", "-c", "mkdir -p /srv && echo hello-from-sandbox > /srv/index.html && "
                         "cd /srv && exec python3 -m http.server 8000")
        wait_port(appliance, anon, sid, 8000)
        page = anon.get(appliance.url(f"8000-{sid}", "/index.html"))
        assert page.status_code == 200 and page.text == "hello-from-sandbox\n"

        # WebSocket upgrade passes through, over TLS and over plain HTTP on the same port.
        copy_into(sid, "ws_echo.py", "/tmp/ws_echo.py")
        start_in_sandbox(sid, "python3", "/tmp/ws_echo.py", "9000")
        wait_for(lambda: _answers_websocket(appliance, f"9000-{sid}"), 15, "the echo server")
        assert websocket_echo(appliance, f"9000-{sid}", "ping över tls") == "ping över tls"
        assert websocket_echo(appliance, f"9000-{sid}", "plain ping", tls=False) == "plain ping"

        # Delete removes the container; the domain then answers 409 terminated.
        gone = api.delete(f"{appliance.api_url}/sandboxes/{sid}")
        assert gone.status_code == 202
        assert appliance.containers() == []
        after = anon.get(appliance.url(sid, "/health"), headers={"X-Access-Token": token})
        assert after.status_code == 409 and "terminated" in after.json()["message"]
        assert api.get(f"{appliance.api_url}/sandboxes/{sid}").json()["data"]["status"] == "terminated"


def _answers_websocket(app: Appliance, label: str) -> bool:
    try:
        return websocket_echo(app, label, "probe") == "probe"
    except AssertionError:
        return False


def test_pause_and_resume(appliance: Appliance) -> None:
    with appliance.client() as api, appliance.client(api_key=None) as anon:
        sbx = create(appliance, api)
        sid, token = sbx["sandbox_id"], sbx["envd_access_token"]
        headers = {"X-Access-Token": token}

        paused = api.post(f"{appliance.api_url}/sandboxes/{sid}/pause")
        assert paused.status_code == 200 and paused.json()["data"]["status"] == "paused"
        assert appliance.containers()[0]["State"] == "paused"
        again = api.post(f"{appliance.api_url}/sandboxes/{sid}/pause")
        assert again.status_code == 409 and again.json()["error"] == "conflict"

        blocked = anon.get(appliance.url(sid, "/health"), headers=headers)
        assert blocked.status_code == 409 and "paused" in blocked.json()["message"]
        html = anon.get(appliance.url(sid, "/health"), headers={**headers, "Accept": "text/html"})
        assert html.status_code == 409 and html.headers["content-type"].startswith("text/html")
        status = api.get(f"{appliance.api_url}/sandboxes/{sid}/status").json()["data"]
        assert status["status"] == "paused"

        resumed = api.post(f"{appliance.api_url}/sandboxes/{sid}/resume")
        assert resumed.status_code == 200 and resumed.json()["data"]["status"] == "running"
        assert anon.get(appliance.url(sid, "/health"), headers=headers).status_code == 204

        # connect resumes a paused sandbox too.
        api.post(f"{appliance.api_url}/sandboxes/{sid}/pause")
        connected = api.post(f"{appliance.api_url}/sandboxes/{sid}/connect", json={"timeout": 120})
        assert connected.status_code == 200 and connected.json()["data"]["status"] == "running"
        assert connected.json()["data"]["timeout"] == 120
        assert anon.get(appliance.url(sid, "/health"), headers=headers).status_code == 204


def test_timeout_expiry_terminates(appliance: Appliance) -> None:
    with appliance.client() as api:
        sid = create(appliance, api)["sandbox_id"]
        reply = api.put(f"{appliance.api_url}/sandboxes/{sid}/timeout", json={"timeout": 2})
        assert reply.status_code == 200
        assert reply.json()["data"]["timeout"] == 2 and reply.json()["data"]["remaining_time"] <= 2

        def terminated() -> bool:
            return api.get(f"{appliance.api_url}/sandboxes/{sid}/status").json()["data"]["status"] == "terminated"

        wait_for(terminated, 20, "the reaper to terminate the sandbox")
        assert appliance.containers() == []


def test_timeout_with_auto_pause_pauses(appliance: Appliance) -> None:
    with appliance.client() as api:
        sid = create(appliance, api, auto_pause=True)["sandbox_id"]
        api.post(f"{appliance.api_url}/sandboxes/{sid}/timeout", json={"timeout": 1})

        def paused() -> bool:
            return api.get(f"{appliance.api_url}/sandboxes/{sid}/status").json()["data"]["status"] == "paused"

        wait_for(paused, 20, "the reaper to pause the sandbox")
        assert appliance.containers()[0]["State"] == "paused"


def test_metrics_and_regions(appliance: Appliance) -> None:
    with appliance.client() as api:
        sid = create(appliance, api, memory_mb=256)["sandbox_id"]
        metrics = api.get(f"{appliance.api_url}/sandboxes/{sid}/metrics")
        assert metrics.status_code == 200
        [sample] = metrics.json()["data"]["metrics"]
        assert sample["mem_total"] == 256 * 1024 * 1024
        assert 0 < sample["mem_used"] < sample["mem_total"]
        assert sample["cpu_count"] == 1 and sample["cpu_used_pct"] >= 0
        old = api.get(f"{appliance.api_url}/sandboxes/{sid}/metrics", params={"end": "1000"})
        assert old.json()["data"]["metrics"] == []
        logs = api.get(f"{appliance.api_url}/sandboxes/{sid}/logs", params={"tail": "50"})
        assert logs.status_code == 200
        assert any('"agent_start"' in line for line in logs.json()["data"]["lines"]), logs.text
        regions = appliance.client(api_key=None).get(f"{appliance.api_url}/scalebox-regions")
        assert regions.status_code == 200 and regions.json()["data"]["scalebox_regions"][0]["id"]


def test_async_create_then_list_with_filters(appliance: Appliance) -> None:
    with appliance.client() as api:
        created = api.post(f"{appliance.api_url}/sandboxes", json={"is_async": True, "metadata": {"team": "a"}})
        assert created.status_code == 201
        sid = created.json()["data"]["sandbox_id"]
        create(appliance, api, metadata={"team": "b"})

        def running() -> bool:
            return api.get(f"{appliance.api_url}/sandboxes/{sid}/status").json()["data"]["status"] == "running"

        wait_for(running, 30, "the async create to finish")
        listed = api.get(f"{appliance.api_url}/sandboxes", params={"metadata": "team=a"}).json()["data"]
        assert [s["sandbox_id"] for s in listed["sandboxes"]] == [sid]
        page = api.get(f"{appliance.api_url}/sandboxes", params={"limit": 1, "page": 2}).json()["data"]
        assert page["pagination"] == {"page": 2, "limit": 1, "total": 2, "total_pages": 2, "offset": 1}
        assert len(page["sandboxes"]) == 1
