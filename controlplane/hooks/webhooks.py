"""Webhooks: a user's URLs told of their events, signed, retried with backoff.

An event of a user (controlplane/events.py) becomes one delivery per matching,
active webhook of theirs, written to the database at once (so it survives a
restart), then POSTed by the Deliverer:

    POST <url>
    Content-Type: application/json
    X-Scalebox-Event: sandbox.started
    X-Scalebox-Delivery: dlv-...
    X-Scalebox-Timestamp: 1764200000
    X-Scalebox-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>

    {"event_id": ..., "type": ..., "subject_id": ..., "created_at": ..., "data": {...}, "webhook_id": ...}

A 2xx answer is success. Anything else (another status, a refused connection, no
answer within 10 s) is retried after 10 s, 1 min, 5 min, 30 min and 2 h (scaled
by `retry_scale`, for tests), then the delivery is failed. Every attempt is
recorded (status code or error, duration) and listed by
`GET /v1/webhooks/{id}/deliveries`. The receiver checks the signature with the
secret it was given at create, and the timestamp against replays.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import httpx
import trio

from appliance import log
from controlplane.apikeys import random_id
from controlplane.errors import BadRequest, Conflict, NotFound
from controlplane.events import EVENT_TYPES, Event
from controlplane.hooks.store import Attempt, Delivery, HooksStore, Webhook

RETRY_DELAYS = (10.0, 60.0, 300.0, 1800.0, 7200.0)
ATTEMPT_TIMEOUT = 10.0
MAX_WEBHOOKS = 20
MAX_URL = 2000
# Parallel deliveries in flight; a slow receiver holds one slot for at most ATTEMPT_TIMEOUT.
CONCURRENCY = 8


# -- pure -------------------------------------------------------------------------------------


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: int, body: bytes, signature: str) -> bool:
    """What a receiver does (and the tests): the signature matches the body and timestamp."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def next_attempt(attempts_made: int, now: float, scale: float = 1.0) -> float | None:
    """When the next attempt is due after `attempts_made` failed ones; None: give up."""
    if attempts_made > len(RETRY_DELAYS):
        return None
    return now + RETRY_DELAYS[attempts_made - 1] * scale


def wants(hook: Webhook, event_type: str) -> bool:
    return hook.active and (not hook.events or event_type in hook.events)


@dataclass(frozen=True)
class HookFields:
    url: str | None = None
    events: list[str] | None = None
    description: str | None = None
    active: bool | None = None


def _deliverable(url: Any) -> bool:
    """Whether `url` is an http(s) URL that a delivery can be POSTed to."""
    if not isinstance(url, str) or len(url) > MAX_URL or not url.isprintable() or " " in url:
        return False
    try:
        parts = urlsplit(url)
        # urlsplit refuses an unbalanced '[' or NFKC-unsafe netloc, .port a port out of range,
        # all with ValueError: a malformed URL, the user's to fix (400), not a crash.
        parts.port  # noqa: B018
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def parse_hook(body: Any, *, creating: bool) -> HookFields:
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_body")
    allowed = {"url", "events", "description", "active"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}; send {', '.join(sorted(allowed))}", code="invalid_field")
    url, events, description, active = (body.get(k) for k in ("url", "events", "description", "active"))
    if url is None and creating:
        raise BadRequest("url is required: where to POST events (http or https)", code="invalid_field")
    if url is not None and not _deliverable(url):
        raise BadRequest(f"url must be an http or https URL of at most {MAX_URL} characters", code="invalid_field")
    if events is not None:
        if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
            raise BadRequest("events must be a list of event types (empty: all)", code="invalid_field")
        unknown_types = sorted(set(events) - set(EVENT_TYPES))
        if unknown_types:
            raise BadRequest(
                f"unknown event type {unknown_types[0]!r}; known: {', '.join(EVENT_TYPES)}", code="invalid_field"
            )
    if description is not None and (not isinstance(description, str) or len(description) > 500):
        raise BadRequest("description must be text of at most 500 characters", code="invalid_field")
    if active is not None and not isinstance(active, bool):
        raise BadRequest("active must be true or false", code="invalid_field")
    return HookFields(
        url=url, events=None if events is None else sorted(set(events)), description=description, active=active
    )


# -- the service ------------------------------------------------------------------------------


class Webhooks:
    def __init__(self, store: HooksStore, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        # Set by the Deliverer: wakes it when a delivery is queued.
        self.queued = trio.Event()

    def get(self, owner_id: str, hook_id: str) -> Webhook:
        hook = self.store.get_webhook(hook_id)
        if hook is None or hook.owner_id != owner_id:
            raise NotFound(f"webhook {hook_id[:64]} does not exist", code="webhook_not_found")
        return hook

    def create(self, owner_id: str, fields: HookFields) -> Webhook:
        assert fields.url is not None
        if len(self.store.webhooks_of(owner_id)) >= MAX_WEBHOOKS:
            raise Conflict(f"{MAX_WEBHOOKS} webhooks, the most a user may have", code="too_many_webhooks")
        now = self.clock()
        hook = Webhook(
            id=random_id("whk-"),
            owner_id=owner_id,
            url=fields.url,
            events=fields.events or [],
            secret="whsec_" + secrets.token_urlsafe(24),
            description=fields.description or "",
            active=True if fields.active is None else fields.active,
            created_at=now,
            updated_at=now,
        )
        self.store.put_webhook(hook)
        return hook

    def update(self, owner_id: str, hook_id: str, fields: HookFields) -> Webhook:
        hook = self.get(owner_id, hook_id)
        changes = {k: v for k, v in vars(fields).items() if v is not None}
        hook = replace(hook, **changes, updated_at=self.clock())
        self.store.put_webhook(hook)
        return hook

    def delete(self, owner_id: str, hook_id: str) -> Webhook:
        hook = self.get(owner_id, hook_id)
        self.store.delete_webhook(hook.id)
        return hook

    def on_event(self, event: Event) -> None:
        """An event listener: queue a delivery for each webhook of the event's owner that wants it."""
        now = self.clock()
        for hook in self.store.webhooks_of(event.owner_id):
            if not wants(hook, event.type):
                continue
            payload = json.dumps({**event.to_json(), "webhook_id": hook.id}, separators=(",", ":"))
            self.store.put_delivery(
                Delivery(
                    id=random_id("dlv-"),
                    webhook_id=hook.id,
                    event_id=event.id,
                    event_type=event.type,
                    payload=payload,
                    status="pending",
                    next_attempt_at=now,
                    created_at=now,
                    updated_at=now,
                )
            )
            self.queued.set()


class Deliverer:
    """The Trio task that POSTs due deliveries, records each attempt and schedules retries."""

    def __init__(
        self,
        webhooks: Webhooks,
        *,
        retry_scale: float = 1.0,
        timeout: float = ATTEMPT_TIMEOUT,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.webhooks = webhooks
        self.store = webhooks.store
        self.retry_scale = retry_scale
        self.timeout = timeout
        self._client = client
        self._slots = trio.Semaphore(CONCURRENCY)
        self._in_flight: set[str] = set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # follow_redirects off: a receiver's 3xx is not a 2xx, and following it would send
        # the signed event somewhere the user did not name.
        client = self._client or httpx.AsyncClient(timeout=self.timeout, follow_redirects=False)
        async with client, trio.open_nursery() as nursery:
            task_status.started()
            while True:
                self.webhooks.queued = trio.Event()
                now = self.webhooks.clock()
                for delivery in self.store.due_deliveries(now):
                    if delivery.id in self._in_flight:
                        continue
                    await self._slots.acquire()
                    self._in_flight.add(delivery.id)
                    nursery.start_soon(self._attempt, client, delivery)
                due = self.store.next_due()
                wait = 5.0 if due is None else max(0.05, min(5.0, due - self.webhooks.clock()))
                with trio.move_on_after(wait):
                    await self.webhooks.queued.wait()

    async def _attempt(self, client: httpx.AsyncClient, delivery: Delivery) -> None:
        try:
            hook = self.store.get_webhook(delivery.webhook_id)
            if hook is None:
                return
            attempt_no = delivery.attempts + 1
            body = delivery.payload.encode()
            stamp = int(self.webhooks.clock())
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "scalebox-appliance-webhooks",
                "X-Scalebox-Event": delivery.event_type,
                "X-Scalebox-Delivery": delivery.id,
                "X-Scalebox-Timestamp": str(stamp),
                "X-Scalebox-Signature": sign(hook.secret, stamp, body),
            }
            started = time.monotonic()
            status_code: int | None = None
            error: str | None = None
            try:
                with trio.fail_after(self.timeout):
                    response = await client.post(hook.url, content=body, headers=headers)
                status_code = response.status_code
                if not 200 <= status_code < 300:
                    error = f"answered {status_code}"
            except trio.TooSlowError:
                error = f"no answer within {self.timeout:g} s"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"[:300]
            ms = round((time.monotonic() - started) * 1000, 1)
            now = self.webhooks.clock()
            self.store.add_attempt(
                Attempt(
                    delivery_id=delivery.id, webhook_id=hook.id, attempt=attempt_no, at=now,
                    status_code=status_code, error=error, ms=ms,
                )
            )  # fmt: skip
            if error is None:
                status, due = "succeeded", None
            else:
                due = next_attempt(attempt_no, now, self.retry_scale)
                status = "pending" if due is not None else "failed"
            self.store.put_delivery(
                replace(delivery, status=status, attempts=attempt_no, next_attempt_at=due, updated_at=now)
            )
            log.event(
                "webhook.delivery", webhook_id=hook.id, delivery_id=delivery.id, event_type=delivery.event_type,
                attempt=attempt_no, status_code=status_code, error=error, outcome=status, ms=ms,
            )  # fmt: skip
        finally:
            self._in_flight.discard(delivery.id)
            self._slots.release()
