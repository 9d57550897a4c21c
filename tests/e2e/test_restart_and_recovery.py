"""End to end: the appliance restarts cleanly, and a kill -9 leaves nothing half-done."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
import pytest

from tests.e2e.appliance import Appliance, podman, remove_containers
from tests.e2e.helpers import create, wait_for

pytestmark = pytest.mark.podman


def test_sigterm_exits_zero_and_sandboxes_survive_restart(new_appliance: Callable[[], Appliance]) -> None:
    first = new_appliance()
    with first.client() as api:
        sbx = create(first, api)
    sid, token = sbx["sandbox_id"], sbx["envd_access_token"]
    assert first.stop() == 0
    assert first.events("appliance.stopped")

    second = new_appliance()
    with second.client() as api, second.client(api_key=None) as anon:
        listed = api.get(f"{second.api_url}/sandboxes").json()["data"]["sandboxes"]
        assert [s["sandbox_id"] for s in listed] == [sid]
        assert listed[0]["status"] == "running"
        health = anon.get(second.url(sid, "/health"), headers={"X-Access-Token": token})
        assert health.status_code == 204


def test_kill_9_during_create_leaves_no_orphan(new_appliance: Callable[[], Appliance]) -> None:
    first = new_appliance()
    key = first.api_key
    outcome: list[object] = []

    def create_in_background() -> None:
        try:
            with first.client(timeout=30) as api:
                outcome.append(api.post(f"{first.api_url}/sandboxes", json={}))
        except httpx.HTTPError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=create_in_background)
    thread.start()
    # Kill at the worst moment: the row says "starting" and the container exists.
    wait_for(lambda: bool(first.events("sandbox.container_created")), 30, "the container to be created")
    first.kill()
    thread.join(10)
    assert outcome and isinstance(outcome[0], httpx.HTTPError), "the create should not have been answered"
    [event] = first.events("sandbox.container_created")
    assert len(first.containers()) == 1  # left behind by the killed process

    second = new_appliance()
    assert second.api_key == key
    assert second.containers() == []
    assert [e["sandbox_id"] for e in second.events("reconcile.unfinished_create")] == [event["sandbox_id"]]
    with second.client() as api:
        everything = api.get(f"{second.api_url}/sandboxes", params={"status": ",".join(ALL_STATES)})
        assert everything.json()["data"]["sandboxes"] == []
        assert api.get(f"{second.api_url}/sandboxes/{event['sandbox_id']}").status_code == 404
        # And the appliance still creates sandboxes normally afterwards.
        assert create(second, api)["status"] == "running"


def test_orphan_container_and_vanished_container_are_reconciled(new_appliance: Callable[[], Appliance]) -> None:
    first = new_appliance()
    with first.client() as api:
        kept = create(first, api)["sandbox_id"]
        lost = create(first, api)["sandbox_id"]
    assert first.stop() == 0
    # While the appliance is down, one sandbox's container disappears...
    remove_containers(f"scalebox-{lost}")
    # ...and a container of ours appears that no row knows.
    podman("run", "-d", "--name", f"scalebox-orphan-{first.port}", "--label", "io.scalebox.managed=true",
           "--label", f"io.scalebox.instance={first.instance_id}", "--label", "io.scalebox.sandbox-id=sbx-orphan0000",
           "localhost/scalebox/base:latest", "sleep", "infinity")
    assert len(first.containers()) == 2

    second = new_appliance()
    with second.client() as api:
        assert api.get(f"{second.api_url}/sandboxes/{kept}").json()["data"]["status"] == "running"
        lost_row = api.get(f"{second.api_url}/sandboxes/{lost}").json()["data"]
        assert lost_row["status"] == "terminated" and "vanished" in lost_row["reason"]
    assert [c["Labels"]["io.scalebox.sandbox-id"] for c in second.containers()] == [kept]


ALL_STATES = ["starting", "running", "pausing", "paused", "resuming", "terminating", "terminated", "failed"]
