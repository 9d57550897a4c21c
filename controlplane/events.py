"""What happened in the control plane, as events: one publisher, any number of listeners.

    sandbox.created  sandbox.started  sandbox.paused  sandbox.resumed
    sandbox.terminated  sandbox.failed  sandbox.timeout_warning
    template.built  template.failed

The lifecycle service (and the templates builder) publish; webhooks, notifications
and metering listen. Publishing never waits and never fails: each listener is a
plain function called in order, and one that raises is logged and skipped, so a
broken listener cannot stop a sandbox from starting. Listeners that do I/O queue
the event and do it in their own task.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from appliance import log
from controlplane.lifecycle.states import State

SANDBOX_EVENTS = (
    "sandbox.created",
    "sandbox.started",
    "sandbox.paused",
    "sandbox.resumed",
    "sandbox.terminated",
    "sandbox.failed",
    "sandbox.timeout_warning",
)
TEMPLATE_EVENTS = ("template.built", "template.failed")
EVENT_TYPES = SANDBOX_EVENTS + TEMPLATE_EVENTS


@dataclass(frozen=True, kw_only=True)
class Event:
    id: str
    type: str
    # The user whose resource it is: only their webhooks and notifications see it.
    owner_id: str
    # The sandbox's or template's id.
    subject_id: str
    created_at: float
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "event_id": self.id,
            "type": self.type,
            "subject_id": self.subject_id,
            "created_at": self.created_at,
            "data": self.data,
        }


def new_event(
    type_: str, *, owner_id: str, subject_id: str, data: dict[str, Any] | None = None, now: float | None = None
) -> Event:
    if type_ not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type_!r}")
    return Event(
        id="evt-" + secrets.token_hex(10),
        type=type_,
        owner_id=owner_id,
        subject_id=subject_id,
        created_at=time.time() if now is None else now,
        data=dict(data or {}),
    )


def transition_event(old: State | None, new: State) -> str | None:
    """The event a sandbox's state change means, if any (old None: the row was just made)."""
    if old is None:
        return "sandbox.created"
    if old is new:
        return None
    if new is State.RUNNING:
        return "sandbox.resumed" if old is State.RESUMING else "sandbox.started"
    return {
        State.PAUSED: "sandbox.paused",
        State.TERMINATED: "sandbox.terminated",
        State.FAILED: "sandbox.failed",
    }.get(new)


Listener = Callable[[Event], None]


class EventBus:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def publish(self, event: Event) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception as exc:  # a listener's bug must not break the lifecycle
                log.event(
                    "events.listener_failed", event_type=event.type, listener=repr(listener)[:80], error=repr(exc)
                )
