"""End to end, with real Podman: a create served from the warm pool works like any other."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.appliance import Appliance, stop_and_clean
from tests.e2e.helpers import create, wait_for

pytestmark = pytest.mark.podman


@pytest.fixture
def pooled_appliance(data_dir: Path) -> Iterator[Appliance]:
    app = Appliance(data_dir=data_dir, extra_args=("--warm-pool", "base=2"))
    try:
        app.start()
        yield app
    finally:
        stop_and_clean(app)


def pooled_ids(app: Appliance) -> list[str]:
    return [e["sandbox_id"] for e in app.events("pool.ready")]


def test_create_from_the_pool_works_and_the_pool_refills(
    pooled_appliance: Appliance, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = pooled_appliance
    wait_for(lambda: len(pooled_ids(app)) == 2, 60, "the pool to fill")
    first_two = pooled_ids(app)
    with app.client() as api, app.client(api_key=None) as anon:
        # Pooled sandboxes run, but the API shows none of them.
        assert len(app.containers()) == 2
        listed = api.get(f"{app.api_url}/sandboxes").json()["data"]
        assert listed["sandboxes"] == [] and listed["pagination"]["total"] == 0

        sbx = create(app, api, metadata={"suite": "pool"}, timeout=120)
        sid, token = sbx["sandbox_id"], sbx["envd_access_token"]
        assert sid == first_two[0]
        assert [e["sandbox_id"] for e in app.events("pool.take")] == [sid]
        assert sbx["status"] == "running" and sbx["metadata"] == {"suite": "pool"} and sbx["timeout"] == 120
        assert [s["sandbox_id"] for s in api.get(f"{app.api_url}/sandboxes").json()["data"]["sandboxes"]] == [sid]

        # Its agent, through the gateway, checks the token the API handed out.
        assert anon.get(app.url(sid, "/health"), headers={"X-Access-Token": token}).status_code == 204
        assert anon.get(app.url(sid, "/health")).status_code == 401
        ran = api.post(f"{app.api_url}/sandboxes/{sid}/exec", json={"command": "hostname; whoami", "user": "user"})
        assert ran.status_code == 200, ran.text
        assert ran.json()["data"]["stdout"] == f"{sid}\nuser\n"

        # Refilled in the background, to two again.
        wait_for(lambda: len(pooled_ids(app)) == 3, 60, "the pool to refill")
        assert len(app.containers()) == 3

        # The official SDK takes one too, and drives it through its sandbox domain.
        for name, value in app.sdk_env().items():
            monkeypatch.setenv(name, value)
        from scalebox.sandbox_sync import Sandbox

        sandbox = Sandbox.create(metadata={"via": "sdk"})
        assert sandbox.sandbox_id == first_two[1]
        assert sandbox.commands.run("echo from the pool").stdout == "from the pool\n"
        assert sandbox.get_info().metadata == {"via": "sdk"}
        sandbox.kill()

        # env_vars are fixed when a container is created: such a create gets a fresh one.
        fresh = create(app, api, env_vars={"GREETING": "hej"})
        assert fresh["sandbox_id"] not in pooled_ids(app)
        echoed = api.post(f"{app.api_url}/sandboxes/{fresh['sandbox_id']}/exec", json={"command": "echo $GREETING"})
        assert echoed.json()["data"]["stdout"] == "hej\n"

        for other in (sid, fresh["sandbox_id"]):
            assert api.delete(f"{app.api_url}/sandboxes/{other}").status_code == 202
    wait_for(lambda: len(pooled_ids(app)) == 4, 60, "the pool to refill again")
    assert len(app.containers()) == 2  # the pool

    # Stopping removes the pool; nothing of this appliance is left running.
    assert app.stop() == 0
    assert app.events("pool.drained")[0]["removed"] == 2
    assert app.containers() == []
