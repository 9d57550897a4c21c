"""Sandboxes of a project that opted in (sandboxes_connect) reach each other directly; nobody else does."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time

import pytest

from tests.e2e.appliance import Appliance, podman
from tests.e2e.helpers import container_name, create, start_in_sandbox, wait_for

pytestmark = [
    pytest.mark.podman,
    pytest.mark.skipif(shutil.which("nft") is None or os.geteuid() != 0, reason="needs nftables and root"),
]

PORT = 9100
CONNECT = (
    "import socket,sys,time\n"
    "t=time.monotonic()\n"
    "try:\n"
    " s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=3);s.close();print('open')\n"
    "except OSError as e:\n"
    " print('refused' if time.monotonic()-t<1 else 'slow', type(e).__name__)\n"
)


def ip_of(sandbox_id: str) -> str:
    inspected = json.loads(podman("inspect", container_name(sandbox_id)))[0]
    (network,) = inspected["NetworkSettings"]["Networks"].values()
    return str(network["IPAddress"])


def connect(source: str, target: str) -> str:
    return podman("exec", container_name(source), "python3", "-c", CONNECT, ip_of(target), str(PORT)).strip()


def host_reaches(address: str) -> bool:
    try:
        socket.create_connection((address, PORT), timeout=2).close()
        return True
    except OSError:
        return False


def test_only_sandboxes_of_an_opted_in_project_connect(appliance: Appliance) -> None:
    app = appliance
    with app.client() as api:
        project = api.post(f"{app.api_url}/projects", json={"name": "pair"}).json()["data"]["project_id"]
        first, second = (create(app, api, project_id="pair")["sandbox_id"] for _ in range(2))
        outsider = create(app, api)["sandbox_id"]
    for sid in (first, second, outsider):
        start_in_sandbox(sid, "python3", "-m", "http.server", str(PORT))
    for sid in (first, second, outsider):
        wait_for(lambda sid=sid: host_reaches(ip_of(sid)), 15, f"port {PORT} in {sid}")
    # Not opted in yet: refused, at once, like any two sandboxes.
    assert connect(first, second).startswith("refused")
    with app.client() as api:
        resp = api.patch(f"{app.api_url}/projects/{project}", json={"sandboxes_connect": True})
        assert resp.status_code == 200, resp.text
    assert connect(first, second) == "open"
    assert connect(second, first) == "open"
    # Outside the project, both ways: still refused.
    assert connect(outsider, first).startswith("refused")
    assert connect(first, outsider).startswith("refused")
    # Moved out, it loses the way in at once.
    with app.client() as api:
        default = next(p for p in api.get(f"{app.api_url}/projects").json()["data"]["projects"] if p["is_default"])
        moved = api.post(f"{app.api_url}/sandboxes/{second}/move", json={"project_id": default["project_id"]})
        assert moved.status_code == 200, moved.text
    started = time.monotonic()
    assert connect(first, second).startswith("refused")
    assert time.monotonic() - started < 10
