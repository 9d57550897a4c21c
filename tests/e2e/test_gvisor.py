"""The gvisor runtime end to end: real Podman, runsc, the appliance and the official SDK.

The lifecycle, agent and SDK tests of the runc tier run here again, unchanged, on
gVisor sandboxes: the REST ones through their module's `create` helper, replaced
for the test by one that asks for `"runtime": "gvisor"` and checks the container
really runs on runsc; the SDK ones through a `sandbox` fixture that creates from
the `base-gvisor` template (the SDK cannot send `runtime`). The tests written for
this module prove the sandbox is gVisor's and what it does not do.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e import test_agent_access, test_sdk_agent
from tests.e2e import test_sandbox_lifecycle as lifecycle
from tests.e2e.appliance import REPO, Appliance, podman
from tests.e2e.helpers import ASSETS, container_name, create

pytestmark = pytest.mark.podman


def create_gvisor(app: Appliance, client: httpx.Client, **body: Any) -> dict[str, Any]:
    """helpers.create, on gVisor."""
    data = create(app, client, runtime="gvisor", **body)
    assert data["runtime"] == "gvisor"
    assert oci_runtime(data["sandbox_id"]) == "runsc"
    return data


def oci_runtime(sandbox_id: str) -> str:
    [attrs] = json.loads(podman("inspect", container_name(sandbox_id)))
    return str(attrs["OCIRuntime"])


def copy_by_exec(sandbox_id: str, asset: str, dest: str) -> None:
    """helpers.copy_into through the sandbox's own shell: `podman cp` into a running
    gVisor sandbox fails ("could not be found on container"), as it works from the
    mount namespace of the container's process, which under runsc is runsc's own."""
    env = {**os.environ, "CONTAINERS_CONF": str(REPO / "podman" / "containers.conf")}
    subprocess.run(
        ["podman", "exec", "-i", container_name(sandbox_id), "sh", "-c", 'cat > "$1"', "sh", dest],
        input=(ASSETS / asset).read_bytes(), env=env, check=True, capture_output=True, timeout=60,
    )  # fmt: skip


@pytest.fixture(autouse=True)
def _on_gvisor(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (lifecycle, test_agent_access):
        monkeypatch.setattr(module, "create", create_gvisor)
    monkeypatch.setattr(lifecycle, "copy_into", copy_by_exec)


@pytest.fixture
def sandbox(sdk_env: Appliance) -> Iterator[object]:
    """test_sdk_agent's sandbox, from the gvisor template."""
    from scalebox.sandbox_sync import Sandbox

    sbx = Sandbox.create(template="base-gvisor")
    try:
        assert oci_runtime(sbx.sandbox_id) == "runsc"
        yield sbx
    finally:
        sbx.kill()


sdk_env = test_sdk_agent.sdk_env
running = test_agent_access.running

# -- the runc tier's tests, on gVisor -------------------------------------------------------

test_create_reach_agent_and_services_then_delete = lifecycle.test_create_reach_agent_and_services_then_delete
test_pause_and_resume = lifecycle.test_pause_and_resume
test_timeout_with_auto_pause_pauses = lifecycle.test_timeout_with_auto_pause_pauses
test_metrics_and_regions = lifecycle.test_metrics_and_regions
test_api_exec_and_files = test_agent_access.test_api_exec_and_files
test_files_round_trip_and_metadata = test_sdk_agent.test_files_round_trip_and_metadata
test_watch_dir_reports_changes = test_sdk_agent.test_watch_dir_reports_changes
test_commands = test_sdk_agent.test_commands
test_pty = test_sdk_agent.test_pty
test_large_file_round_trip = test_sdk_agent.test_large_file_round_trip

# -- gVisor's own ------------------------------------------------------------------------------


def _run(api: httpx.Client, app: Appliance, sandbox_id: str, command: str) -> dict[str, Any]:
    reply = api.post(f"{app.api_url}/sandboxes/{sandbox_id}/exec", json={"command": command})
    assert reply.status_code == 200, reply.text
    data: dict[str, Any] = reply.json()["data"]
    return data


def test_the_sandbox_runs_on_gvisors_kernel_and_a_runc_one_does_not(appliance: Appliance) -> None:
    host_release = Path("/proc/sys/kernel/osrelease").read_text().strip()
    with appliance.client() as api:
        gvisor = create_gvisor(appliance, api)["sandbox_id"]
        runc = create(appliance, api)
        assert runc["runtime"] == "runc" and oci_runtime(runc["sandbox_id"]) == "runc"

        seen = _run(api, appliance, gvisor, "cat /proc/version; dmesg | head -n 1")
        assert seen["exit_code"] == 0, seen
        assert "gVisor" in seen["stdout"] and host_release not in seen["stdout"]
        # The sandbox has its own address on the appliance's bridge, served by gVisor's
        # network stack (netstack): its interfaces are gVisor's, not the host kernel's.
        net = _run(api, appliance, gvisor, "cat /proc/net/dev; hostname -I || true")
        assert "eth0" in net["stdout"]
        row = api.get(f"{appliance.api_url}/sandboxes/{gvisor}").json()["data"]
        assert row["runtime"] == "gvisor"

        on_runc = _run(api, appliance, runc["sandbox_id"], "cat /proc/version")
        assert host_release in on_runc["stdout"]


def test_a_gvisor_create_without_runsc_or_with_an_unknown_runtime_is_refused(appliance: Appliance) -> None:
    with appliance.client() as api:
        unknown = api.post(f"{appliance.api_url}/sandboxes", json={"runtime": "kata"})
        assert unknown.status_code == 400 and "runtime must be one of runc, gvisor" in unknown.json()["message"]
    assert appliance.containers() == []
    # runsc is there (make setup installs it): the appliance said so on start.
    [event] = appliance.events("appliance.runtimes")
    assert event["available"] == ["gvisor", "runc"]
