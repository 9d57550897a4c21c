"""Two users on a real appliance: each sees only their own sandboxes, through the API and the terminal."""

from __future__ import annotations

import pytest

from tests.e2e.appliance import Appliance
from tests.e2e.helpers import create

pytestmark = pytest.mark.podman


def test_two_users_cannot_see_or_touch_each_others_sandboxes(appliance: Appliance) -> None:
    app = appliance
    keys = {}
    with app.client() as admin:
        for name in ("alice", "bob"):
            resp = admin.post(f"{app.api_url}/users", json={"name": name})
            assert resp.status_code == 201, resp.text
            keys[name] = resp.json()["data"]["first_key"]["api_key"]
    with app.client(api_key=keys["alice"]) as alice, app.client(api_key=keys["bob"]) as bob:
        sandbox = create(app, alice)
        sid = sandbox["sandbox_id"]
        assert bob.get(f"{app.api_url}/sandboxes").json()["data"]["sandboxes"] == []
        for method, suffix in (("GET", ""), ("DELETE", ""), ("POST", "/pause"), ("GET", "/logs"), ("GET", "/ports")):
            resp = bob.request(method, f"{app.api_url}/sandboxes/{sid}{suffix}")
            assert resp.status_code == 404, (method, suffix, resp.text)
            assert resp.json()["message"] == f"sandbox {sid} does not exist"
        # Alice's sandbox is untouched and still hers; her token reaches its agent.
        assert alice.get(f"{app.api_url}/sandboxes/{sid}").json()["data"]["status"] == "running"
        health = alice.get(app.url(sid, "/health"), headers={"X-Access-Token": sandbox["envd_access_token"]})
        assert health.status_code in (200, 204), health.text
        # Bob's key is his: disabling it locks only him out.
        key_id = bob.get(f"{app.api_url}/api-keys").json()["data"]["api_keys"][0]["key_id"]
        assert bob.patch(f"{app.api_url}/api-keys/{key_id}", json={"disabled": True}).status_code == 200
        refused = bob.get(f"{app.api_url}/sandboxes")
        assert refused.status_code == 401 and refused.json()["code"] == "api_key_disabled"
        assert alice.delete(f"{app.api_url}/sandboxes/{sid}").status_code == 202
