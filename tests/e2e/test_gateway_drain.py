"""SIGTERM in a real appliance with several gateway processes: a request in flight to a
sandbox finishes, new connections are refused, and the process exits within the bound."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from tests.e2e.appliance import Appliance
from tests.e2e.helpers import copy_into, create, start_in_sandbox, wait_for, wait_port

pytestmark = pytest.mark.podman

DRAIN_BOUND = 10.0  # gateway.server.GatewayLimits.drain_timeout


def _refused(app: Appliance) -> bool:
    try:
        socket.create_connection(("127.0.0.1", app.port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_finishes_the_request_in_flight_refuses_new_ones_and_exits(
    new_appliance: Callable[[], Appliance], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCALEBOX_GATEWAY_PROCESSES", "2")
    app = new_appliance()
    with app.client() as api:
        sid = create(app, api)["sandbox_id"]
        copy_into(sid, "slow_http.py", "/tmp/slow_http.py")
        start_in_sandbox(sid, "python3", "/tmp/slow_http.py", "3000")
        wait_port(app, api, sid, 3000)
    outcome: list[object] = []

    def slow_request() -> None:
        with app.client(api_key=None) as anon:
            try:
                outcome.append(anon.get(app.url(f"3000-{sid}", "/slow?s=3")))
            except httpx.HTTPError as exc:
                outcome.append(exc)

    flight = threading.Thread(target=slow_request)
    flight.start()
    time.sleep(1.0)  # the request is with the sandbox now: it answers after 3 s
    assert app.process is not None
    stopping = time.monotonic()
    app.process.send_signal(signal.SIGTERM)
    wait_for(lambda: _refused(app), 5, "new connections to be refused")
    assert not outcome, "the request in flight must still be running while new connections are refused"
    flight.join(timeout=15)
    [response] = outcome
    assert isinstance(response, httpx.Response) and response.status_code == 200, response
    assert response.text == "done /slow"
    assert app.process.wait(DRAIN_BOUND + 5) == 0
    assert time.monotonic() - stopping < DRAIN_BOUND + 5
    assert app.events("appliance.stopped")
