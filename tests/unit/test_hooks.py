"""Events, webhooks (signed, retried, every attempt recorded) and notifications."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio

from controlplane.events import EventBus, new_event, transition_event
from controlplane.hooks.store import HooksStore
from controlplane.hooks.webhooks import Deliverer, HookFields, Webhooks, next_attempt, sign, verify
from controlplane.lifecycle.states import State
from controlplane.store import Store
from tests.unit.test_api import Api, api  # noqa: F401 - the fixture
from tests.unit.test_api_accounts import make_user

# -- events ---------------------------------------------------------------------------------------


def test_state_changes_map_to_events() -> None:
    assert transition_event(None, State.STARTING) == "sandbox.created"
    assert transition_event(State.STARTING, State.RUNNING) == "sandbox.started"
    assert transition_event(State.RESUMING, State.RUNNING) == "sandbox.resumed"
    assert transition_event(State.PAUSING, State.PAUSED) == "sandbox.paused"
    assert transition_event(State.TERMINATING, State.TERMINATED) == "sandbox.terminated"
    assert transition_event(State.STARTING, State.FAILED) == "sandbox.failed"
    assert transition_event(State.RUNNING, State.PAUSING) is None
    with pytest.raises(ValueError):
        new_event("sandbox.exploded", owner_id="u", subject_id="s")


def test_a_failing_listener_does_not_stop_the_others(log_events: list[dict[str, Any]]) -> None:
    bus = EventBus()
    seen: list[str] = []

    def broken(_: Any) -> None:
        raise RuntimeError("boom")

    bus.subscribe(broken)
    bus.subscribe(lambda e: seen.append(e.type))
    bus.publish(new_event("sandbox.created", owner_id="u", subject_id="s"))
    assert seen == ["sandbox.created"]
    assert [e["event"] for e in log_events] == ["events.listener_failed"]


# -- signing and backoff --------------------------------------------------------------------------


def test_signature_and_backoff() -> None:
    body = b'{"type":"sandbox.started"}'
    signature = sign("whsec_x", 1700000000, body)
    assert signature.startswith("sha256=") and verify("whsec_x", 1700000000, body, signature)
    assert not verify("whsec_x", 1700000001, body, signature)
    assert not verify("whsec_y", 1700000000, body, signature)
    assert not verify("whsec_x", 1700000000, body + b" ", signature)
    assert next_attempt(1, 100.0) == 110.0
    assert next_attempt(5, 100.0) == 7300.0
    assert next_attempt(6, 100.0) is None
    assert next_attempt(2, 0.0, scale=0.01) == pytest.approx(0.6)


# -- delivery ------------------------------------------------------------------------------------


async def test_deliveries_are_signed_retried_and_recorded(tmp_path: Any) -> None:
    store = Store(tmp_path / "db.sqlite")
    webhooks = Webhooks(store.hooks)
    hook = webhooks.create("usr-a", HookFields(url="https://receiver.example/hook", events=["sandbox.started"]))
    other = webhooks.create("usr-b", HookFields(url="https://other.example/hook"))
    received: list[httpx.Request] = []
    answers = [503, 200]

    def handler(request: httpx.Request) -> httpx.Response:
        received.append(request)
        return httpx.Response(answers.pop(0))

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    deliverer = Deliverer(webhooks, retry_scale=0.001, client=client)
    async with trio.open_nursery() as nursery:
        await nursery.start(deliverer.run)
        # Not wanted (type), and another user's: neither reaches this hook.
        webhooks.on_event(new_event("sandbox.created", owner_id="usr-a", subject_id="sbx-1"))
        webhooks.on_event(new_event("sandbox.started", owner_id="usr-a", subject_id="sbx-1", data={"x": 1}))
        with trio.fail_after(5):
            while len(received) < 2:
                await trio.sleep(0.01)
            while store.hooks.deliveries_of(hook.id, 10, 0)[0][0].status == "pending":
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert all(r.url == "https://receiver.example/hook" for r in received)
    first, second = received
    body = first.content
    assert json.loads(body)["type"] == "sandbox.started" and json.loads(body)["data"] == {"x": 1}
    assert first.headers["X-Scalebox-Event"] == "sandbox.started"
    stamp = int(second.headers["X-Scalebox-Timestamp"])
    assert verify(hook.secret, stamp, second.content, second.headers["X-Scalebox-Signature"])
    assert first.headers["X-Scalebox-Delivery"] == second.headers["X-Scalebox-Delivery"]
    [delivery], total = store.hooks.deliveries_of(hook.id, 10, 0)
    assert total == 1 and delivery.status == "succeeded" and delivery.attempts == 2
    attempts = store.hooks.attempts_of([delivery.id])[delivery.id]
    assert [(a.attempt, a.status_code, a.error) for a in attempts] == [(1, 503, "answered 503"), (2, 200, None)]
    assert store.hooks.deliveries_of(other.id, 10, 0) == ([], 0)
    store.close()


async def test_a_delivery_that_never_succeeds_is_failed_after_the_last_retry(tmp_path: Any) -> None:
    store = Store(tmp_path / "db.sqlite")
    webhooks = Webhooks(store.hooks)
    hook = webhooks.create("usr-a", HookFields(url="http://127.0.0.1:9/hook"))

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    deliverer = Deliverer(webhooks, retry_scale=0.0001, client=httpx.AsyncClient(transport=httpx.MockTransport(refuse)))
    async with trio.open_nursery() as nursery:
        await nursery.start(deliverer.run)
        webhooks.on_event(new_event("sandbox.failed", owner_id="usr-a", subject_id="sbx-1"))
        with trio.fail_after(10):
            while store.hooks.deliveries_of(hook.id, 10, 0)[0][0].status == "pending":
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    [delivery], _ = store.hooks.deliveries_of(hook.id, 10, 0)
    assert delivery.status == "failed" and delivery.attempts == 6
    errors = [a.error for a in store.hooks.attempts_of([delivery.id])[delivery.id]]
    assert len(errors) == 6 and all(e and "ConnectError" in e for e in errors)
    store.close()


def test_the_hooks_tables_survive_a_reopen(tmp_path: Any) -> None:
    store = Store(tmp_path / "db.sqlite")
    hook = Webhooks(store.hooks).create("usr-a", HookFields(url="https://x.example/"))
    store.close()
    again = Store(tmp_path / "db.sqlite")
    assert isinstance(again.hooks, HooksStore) and again.hooks.get_webhook(hook.id) == hook
    again.close()


# -- through the API --------------------------------------------------------------------------------


async def test_webhook_routes(api: Api) -> None:  # noqa: F811
    status, payload = await api.call(
        "POST", "/v1/webhooks", body={"url": "https://hooks.example/in", "events": ["sandbox.paused"]}
    )
    assert status == 201, payload
    hook = payload["data"]
    assert hook["secret"].startswith("whsec_") and hook["events"] == ["sandbox.paused"] and not hook["all_events"]
    hook_id = hook["webhook_id"]
    status, payload = await api.call("GET", "/v1/webhooks")
    assert [h["webhook_id"] for h in payload["data"]["webhooks"]] == [hook_id]
    assert "secret" not in payload["data"]["webhooks"][0]
    status, payload = await api.call("PATCH", f"/v1/webhooks/{hook_id}", body={"events": [], "active": False})
    assert status == 200 and payload["data"]["all_events"] and payload["data"]["active"] is False
    for body, word in (
        ({}, "url is required"),
        ({"url": "ftp://x/"}, "http or https"),
        ({"url": "https://x/", "events": ["sandbox.exploded"]}, "unknown event type"),
        ({"url": "https://x/", "active": "yes"}, "true or false"),
        ({"url": "https://x/", "secret": "mine"}, "unknown field"),
    ):
        status, payload = await api.call("POST", "/v1/webhooks", body=body)
        assert status == 400 and word in payload["message"], (body, payload)
    _, bob_key = await make_user(api, "bob")
    for method in ("GET", "PATCH", "DELETE"):
        status, _ = await api.call(
            method, f"/v1/webhooks/{hook_id}", body={} if method == "PATCH" else None, key=bob_key
        )
        assert status == 404
    assert (await api.call("GET", f"/v1/webhooks/{hook_id}/deliveries", key=bob_key))[0] == 404
    status, payload = await api.call("DELETE", f"/v1/webhooks/{hook_id}")
    assert status == 200
    assert (await api.call("GET", f"/v1/webhooks/{hook_id}"))[0] == 404


async def test_events_queue_deliveries_for_the_owners_hooks(api: Api) -> None:  # noqa: F811
    _, payload = await api.call("POST", "/v1/webhooks", body={"url": "https://hooks.example/in"})
    hook_id = payload["data"]["webhook_id"]
    sandbox = await api.create()
    _status, payload = await api.call("GET", f"/v1/webhooks/{hook_id}/deliveries")
    kinds = sorted(d["event_type"] for d in payload["data"]["deliveries"])
    assert kinds == ["sandbox.created", "sandbox.started"]
    assert all(d["status"] == "pending" and d["attempts"] == [] for d in payload["data"]["deliveries"])
    # Another user's sandbox reaches none of the admin's hooks.
    _, bob_key = await make_user(api, "bob")
    await api.call("POST", "/v1/sandboxes", body={}, key=bob_key)
    _, payload = await api.call("GET", f"/v1/webhooks/{hook_id}/deliveries")
    assert payload["data"]["pagination"]["total"] == 2
    assert sandbox["sandbox_id"] in {
        json.loads(d.payload)["subject_id"] for d in api.store.hooks.deliveries_of(hook_id, 10, 0)[0]
    }


async def test_notifications_follow_events_and_are_read_and_deleted(api: Api) -> None:  # noqa: F811
    sid = (await api.create())["sandbox_id"]
    status, payload = await api.call("POST", f"/v1/sandboxes/{sid}/pause")
    assert status == 200, payload
    status, payload = await api.call("GET", "/v1/notifications")
    notes = payload["data"]["notifications"]
    assert [n["type"] for n in notes] == ["sandbox.paused", "sandbox.started", "sandbox.created"]
    assert payload["data"]["unread"] == 3 and notes[0]["message"] == f"Sandbox {sid} was paused"
    first = notes[0]["notification_id"]
    status, payload = await api.call("POST", f"/v1/notifications/{first}/read")
    assert status == 200 and payload["data"]["read"] is True
    status, payload = await api.call("GET", "/v1/notifications", query={"unread": "true"})
    assert len(payload["data"]["notifications"]) == 2 and payload["data"]["unread"] == 2
    status, payload = await api.call("POST", f"/v1/notifications/{first}/unread")
    assert payload["data"]["read"] is False
    status, payload = await api.call("POST", "/v1/notifications/read-all")
    assert payload["data"]["marked"] == 3
    status, payload = await api.call("GET", "/v1/notifications", query={"unread": "false"})
    assert payload["data"]["pagination"]["total"] == 3 and payload["data"]["unread"] == 0
    assert (await api.call("GET", "/v1/notifications", query={"unread": "maybe"}))[0] == 400
    _, bob_key = await make_user(api, "bob")
    assert (await api.call("GET", "/v1/notifications", key=bob_key))[1]["data"]["notifications"] == []
    assert (await api.call("DELETE", f"/v1/notifications/{first}", key=bob_key))[0] == 404
    assert (await api.call("DELETE", f"/v1/notifications/{first}"))[0] == 200
    assert (await api.call("POST", f"/v1/notifications/{first}/read"))[0] == 404


async def test_a_sandbox_near_its_timeout_warns_once(api: Api) -> None:  # noqa: F811
    sid = (await api.create(timeout=30))["sandbox_id"]
    await api.service.reap_once()
    await api.service.reap_once()
    _status, payload = await api.call("GET", "/v1/notifications")
    warnings = [n for n in payload["data"]["notifications"] if n["type"] == "sandbox.timeout_warning"]
    assert len(warnings) == 1 and warnings[0]["subject_id"] == sid
    assert warnings[0]["data"]["then"] == "terminated" and 0 < warnings[0]["data"]["seconds_left"] <= 30
    # A later deadline that comes near again warns again.
    await api.call("POST", f"/v1/sandboxes/{sid}/timeout", body={"timeout": 45})
    await api.service.reap_once()
    _, payload = await api.call("GET", "/v1/notifications")
    assert sum(n["type"] == "sandbox.timeout_warning" for n in payload["data"]["notifications"]) == 2
