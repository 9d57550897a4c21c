"""Webhooks on a real appliance: a receiver on loopback gets signed deliveries, and a retry after it failed."""

from __future__ import annotations

import http.server
import json
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from controlplane.hooks.webhooks import verify
from tests.e2e.appliance import Appliance, free_port, stop_and_clean
from tests.e2e.helpers import create, wait_for

pytestmark = pytest.mark.podman


@dataclass
class Receiver:
    url: str
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    # Status codes to answer with, in order; 200 once they run out.
    answers: list[int] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    port = free_port()
    state = Receiver(url=f"http://127.0.0.1:{port}/hook")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.received.append(({k: v for k, v in self.headers.items()}, body))
            self.send_response(state.answers.pop(0) if state.answers else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def test_signed_deliveries_and_a_retry_after_a_failure(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    # Retries after 1 s, 6 s, ... instead of 10 s, 1 min, ...
    monkeypatch.setenv("SCALEBOX_WEBHOOK_RETRY_SCALE", "0.1")
    data_dir = Path(tempfile.mkdtemp(prefix="sbx-", dir="/tmp"))
    app = Appliance(data_dir=data_dir)
    try:
        app.start()
        with app.client() as api:
            resp = api.post(f"{app.api_url}/webhooks", json={"url": receiver.url, "events": ["sandbox.started"]})
            assert resp.status_code == 201, resp.text
            hook = resp.json()["data"]
            receiver.answers = [500]
            sid = create(app, api)["sandbox_id"]
            wait_for(lambda: len(receiver.received) >= 2, 30, "the delivery and its retry")
            first, second = receiver.received[:2]
            for headers, body in (first, second):
                assert headers["X-Scalebox-Event"] == "sandbox.started"
                assert verify(
                    hook["secret"], int(headers["X-Scalebox-Timestamp"]), body, headers["X-Scalebox-Signature"]
                )
                event = json.loads(body)
                assert event["subject_id"] == sid and event["webhook_id"] == hook["webhook_id"]
            assert first[0]["X-Scalebox-Delivery"] == second[0]["X-Scalebox-Delivery"]

            def recorded() -> list[dict[str, Any]]:
                listed = api.get(f"{app.api_url}/webhooks/{hook['webhook_id']}/deliveries").json()["data"]
                return list(listed["deliveries"])

            wait_for(lambda: recorded()[0]["status"] == "succeeded", 10, "the delivery recorded")
            [delivery] = recorded()
            assert [(a["attempt"], a["status_code"]) for a in delivery["attempts"]] == [(1, 500), (2, 200)]
            # The same events are notifications too.
            notes = api.get(f"{app.api_url}/notifications").json()["data"]["notifications"]
            assert {"sandbox.created", "sandbox.started"} <= {n["type"] for n in notes}
            assert api.delete(f"{app.api_url}/sandboxes/{sid}").status_code == 202
    finally:
        stop_and_clean(app)
        shutil.rmtree(data_dir, ignore_errors=True)
