"""Gateway worker processes: several processes serve the one port, and none outlives the appliance."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable

import pytest

from tests.e2e.appliance import Appliance
from tests.e2e.helpers import wait_for

pytestmark = pytest.mark.podman


def _worker_pids(app: Appliance) -> set[int]:
    return {int(e["pid"]) for e in app.events("gateway.worker_ready")}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _start(new_appliance: Callable[[], Appliance], monkeypatch: pytest.MonkeyPatch, processes: int) -> Appliance:
    monkeypatch.setenv("SCALEBOX_GATEWAY_PROCESSES", str(processes))
    app = new_appliance()
    wait_for(lambda: len(_worker_pids(app)) == processes - 1, 20, "the gateway workers to start")
    return app


def test_connections_are_served_by_several_processes(
    new_appliance: Callable[[], Appliance], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = _start(new_appliance, monkeypatch, 3)
    # A new connection per request: each goes to whichever process accepts it.
    for _ in range(60):
        with app.client() as fresh:
            assert fresh.get(f"{app.api_url}/sandboxes").status_code == 200
    served_by = {e["worker"] for e in app.events("gateway.request")}
    assert served_by <= {0, 1, 2} and len(served_by) >= 2, served_by
    workers = _worker_pids(app)
    assert app.stop(timeout=30) == 0
    assert not any(_alive(pid) for pid in workers)
    assert [e["worker"] for e in app.events("gateway.worker_stopped")] != []


def test_a_worker_that_dies_is_replaced(
    new_appliance: Callable[[], Appliance], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = _start(new_appliance, monkeypatch, 2)
    (first,) = _worker_pids(app)
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: len(_worker_pids(app)) == 2, 20, "a new worker")
    assert app.events("gateway.worker_died")[0]["worker"] == 1
    with app.client() as api:
        assert api.get(f"{app.api_url}/sandboxes").status_code == 200


def test_workers_die_with_a_killed_appliance_and_free_the_port(
    new_appliance: Callable[[], Appliance], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = _start(new_appliance, monkeypatch, 2)
    workers = _worker_pids(app)
    app.kill()
    wait_for(lambda: not any(_alive(pid) for pid in workers), 10, "the workers to die with the appliance")
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", app.port))
                break
            except OSError:
                assert time.monotonic() < deadline, "the port is still held"
                time.sleep(0.1)


def test_workers_outlive_the_thread_that_started_them(
    new_appliance: Callable[[], Appliance], monkeypatch: pytest.MonkeyPatch
) -> None:
    # trio starts processes from a worker thread that ends after ten idle seconds;
    # a death signal tied to that thread (PR_SET_PDEATHSIG) killed every worker then.
    app = _start(new_appliance, monkeypatch, 2)
    (worker,) = _worker_pids(app)
    time.sleep(13)
    assert _alive(worker) and app.events("gateway.worker_died") == []
    with app.client() as api:
        assert api.get(f"{app.api_url}/sandboxes").status_code == 200
