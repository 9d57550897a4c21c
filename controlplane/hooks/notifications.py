"""Notifications: every event of a user's, kept for them to read in the API.

Each event (controlplane/events.py) becomes one notification for its owner, with a
sentence saying what happened. They are listed newest first, filtered by read or
unread, marked read or unread one by one or all at once, and deleted. A user keeps
their newest KEEP; older ones go as new ones come.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from controlplane.apikeys import random_id
from controlplane.errors import NotFound
from controlplane.events import Event
from controlplane.hooks.store import HooksStore, Notification

KEEP = 1000

_MESSAGES = {
    "sandbox.created": "Sandbox {subject} was created",
    "sandbox.started": "Sandbox {subject} is running",
    "sandbox.paused": "Sandbox {subject} was paused",
    "sandbox.resumed": "Sandbox {subject} was resumed",
    "sandbox.terminated": "Sandbox {subject} was terminated",
    "sandbox.failed": "Sandbox {subject} failed",
    "sandbox.timeout_warning": "Sandbox {subject} reaches its timeout in {seconds} s",
    "template.built": "Template {subject} was built",
    "template.failed": "Template {subject} failed to build",
}


def message(event: Event) -> str:
    text = _MESSAGES.get(event.type, "{subject}: " + event.type).format(
        subject=event.subject_id, seconds=event.data.get("seconds_left", "?")
    )
    reason = event.data.get("reason")
    return f"{text}: {reason}" if reason and event.type.endswith("failed") else text


class Notifications:
    def __init__(self, store: HooksStore, *, clock: Callable[[], float] = time.time, keep: int = KEEP) -> None:
        self.store = store
        self.clock = clock
        self.keep = keep

    def on_event(self, event: Event) -> None:
        self.store.add_notification(
            Notification(
                id=random_id("ntf-"),
                owner_id=event.owner_id,
                event_id=event.id,
                type=event.type,
                subject_id=event.subject_id,
                message=message(event),
                data=event.data,
                created_at=event.created_at,
            ),
            keep=self.keep,
        )

    def get(self, owner_id: str, note_id: str) -> Notification:
        note = self.store.get_notification(note_id)
        if note is None or note.owner_id != owner_id:
            raise NotFound(f"notification {note_id[:64]} does not exist", code="notification_not_found")
        return note

    def mark(self, owner_id: str, note_id: str, *, read: bool) -> Notification:
        self.get(owner_id, note_id)
        self.store.set_read(owner_id, note_id, self.clock() if read else None)
        return self.get(owner_id, note_id)

    def mark_all_read(self, owner_id: str) -> int:
        return self.store.set_read(owner_id, None, self.clock())

    def delete(self, owner_id: str, note_id: str) -> None:
        self.get(owner_id, note_id)
        self.store.delete_notification(owner_id, note_id)
