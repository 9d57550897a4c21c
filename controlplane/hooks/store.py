"""The tables of webhooks, their delivery attempts and notifications, on the Store's connection."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhooks (
    id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    secret TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    active INTEGER NOT NULL DEFAULT 1,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS webhooks_owner ON webhooks (owner_id);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id TEXT PRIMARY KEY,
    webhook_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX IF NOT EXISTS webhook_deliveries_hook ON webhook_deliveries (webhook_id, created_at);
CREATE TABLE IF NOT EXISTS webhook_attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id TEXT NOT NULL,
    webhook_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at REAL NOT NULL,
    status_code INTEGER,
    error TEXT,
    ms REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_attempts_delivery ON webhook_attempts (delivery_id);
CREATE TABLE IF NOT EXISTS notifications (
    id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    type TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT NOT NULL,
    created_at REAL NOT NULL,
    read_at REAL
);
CREATE INDEX IF NOT EXISTS notifications_owner ON notifications (owner_id, created_at);
"""


@dataclass(frozen=True, kw_only=True)
class Webhook:
    id: str
    owner_id: str
    url: str
    # Event types it wants; empty: all of them.
    events: list[str] = field(default_factory=list)
    # The HMAC key of its signatures.
    secret: str
    description: str = ""
    active: bool = True
    created_at: float
    updated_at: float


@dataclass(frozen=True, kw_only=True)
class Delivery:
    id: str
    webhook_id: str
    event_id: str
    event_type: str
    payload: str
    # pending (an attempt is due at next_attempt_at), succeeded, failed (gave up).
    status: str
    attempts: int = 0
    next_attempt_at: float | None = None
    created_at: float
    updated_at: float


@dataclass(frozen=True, kw_only=True)
class Attempt:
    delivery_id: str
    webhook_id: str
    attempt: int
    at: float
    status_code: int | None
    error: str | None
    ms: float


@dataclass(frozen=True, kw_only=True)
class Notification:
    id: str
    owner_id: str
    event_id: str
    type: str
    subject_id: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)
    created_at: float
    read_at: float | None = None


class HooksStore:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        db.executescript(_SCHEMA)

    # -- webhooks --

    def put_webhook(self, hook: Webhook) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO webhooks (id, owner_id, url, events, secret, description, active, created_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (hook.id, hook.owner_id, hook.url, json.dumps(hook.events), hook.secret, hook.description,
             int(hook.active), hook.created_at, hook.updated_at),
        )  # fmt: skip

    def get_webhook(self, hook_id: str) -> Webhook | None:
        row = self._db.execute("SELECT * FROM webhooks WHERE id = ?", (hook_id,)).fetchone()
        return None if row is None else _webhook(row)

    def webhooks_of(self, owner_id: str) -> list[Webhook]:
        rows = self._db.execute("SELECT * FROM webhooks WHERE owner_id = ? ORDER BY created_at, id", (owner_id,))
        return [_webhook(r) for r in rows.fetchall()]

    def delete_webhook(self, hook_id: str) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM webhook_attempts WHERE webhook_id = ?", (hook_id,))
            self._db.execute("DELETE FROM webhook_deliveries WHERE webhook_id = ?", (hook_id,))
            self._db.execute("DELETE FROM webhooks WHERE id = ?", (hook_id,))

    # -- deliveries and attempts --

    def put_delivery(self, delivery: Delivery) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO webhook_deliveries (id, webhook_id, event_id, event_type, payload, status,"
            " attempts, next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (delivery.id, delivery.webhook_id, delivery.event_id, delivery.event_type, delivery.payload,
             delivery.status, delivery.attempts, delivery.next_attempt_at, delivery.created_at, delivery.updated_at),
        )  # fmt: skip

    def due_deliveries(self, now: float, limit: int = 50) -> list[Delivery]:
        rows = self._db.execute(
            "SELECT * FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= ?"
            " ORDER BY next_attempt_at LIMIT ?",
            (now, limit),
        )
        return [_delivery(r) for r in rows.fetchall()]

    def next_due(self) -> float | None:
        row = self._db.execute(
            "SELECT MIN(next_attempt_at) FROM webhook_deliveries WHERE status = 'pending'"
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def deliveries_of(self, hook_id: str, limit: int, offset: int) -> tuple[list[Delivery], int]:
        total = self._db.execute("SELECT COUNT(*) FROM webhook_deliveries WHERE webhook_id = ?", (hook_id,))
        rows = self._db.execute(
            "SELECT * FROM webhook_deliveries WHERE webhook_id = ? ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
            (hook_id, limit, offset),
        )
        return [_delivery(r) for r in rows.fetchall()], int(total.fetchone()[0])

    def add_attempt(self, attempt: Attempt) -> None:
        self._db.execute(
            "INSERT INTO webhook_attempts (delivery_id, webhook_id, attempt, at, status_code, error, ms)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (attempt.delivery_id, attempt.webhook_id, attempt.attempt, attempt.at, attempt.status_code,
             attempt.error, attempt.ms),
        )  # fmt: skip

    def attempts_of(self, delivery_ids: list[str]) -> dict[str, list[Attempt]]:
        out: dict[str, list[Attempt]] = {d: [] for d in delivery_ids}
        if not delivery_ids:
            return out
        rows = self._db.execute(
            f"SELECT * FROM webhook_attempts WHERE delivery_id IN ({','.join('?' * len(delivery_ids))})"
            " ORDER BY attempt",
            delivery_ids,
        )
        for r in rows.fetchall():
            out[r["delivery_id"]].append(
                Attempt(
                    delivery_id=r["delivery_id"], webhook_id=r["webhook_id"], attempt=r["attempt"], at=r["at"],
                    status_code=r["status_code"], error=r["error"], ms=r["ms"],
                )
            )  # fmt: skip
        return out

    # -- notifications --

    def add_notification(self, note: Notification, keep: int) -> None:
        """Store one; a user keeps their newest `keep`."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT INTO notifications (id, owner_id, event_id, type, subject_id, message, data, created_at,"
                " read_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (note.id, note.owner_id, note.event_id, note.type, note.subject_id, note.message,
                 json.dumps(note.data), note.created_at, note.read_at),
            )  # fmt: skip
            self._db.execute(
                "DELETE FROM notifications WHERE owner_id = ? AND id NOT IN (SELECT id FROM notifications"
                " WHERE owner_id = ? ORDER BY created_at DESC, id DESC LIMIT ?)",
                (note.owner_id, note.owner_id, keep),
            )

    def notifications_of(
        self, owner_id: str, *, unread: bool | None, limit: int, offset: int
    ) -> tuple[list[Notification], int, int]:
        """A page of a user's notifications, newest first; the total that match, and how many are unread."""
        clause = "owner_id = ?"
        if unread is True:
            clause += " AND read_at IS NULL"
        elif unread is False:
            clause += " AND read_at IS NOT NULL"
        total = self._db.execute(f"SELECT COUNT(*) FROM notifications WHERE {clause}", (owner_id,)).fetchone()[0]
        unread_count = self._db.execute(
            "SELECT COUNT(*) FROM notifications WHERE owner_id = ? AND read_at IS NULL", (owner_id,)
        ).fetchone()[0]
        rows = self._db.execute(
            f"SELECT * FROM notifications WHERE {clause} ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
            (owner_id, limit, offset),
        )
        return [_notification(r) for r in rows.fetchall()], int(total), int(unread_count)

    def get_notification(self, note_id: str) -> Notification | None:
        row = self._db.execute("SELECT * FROM notifications WHERE id = ?", (note_id,)).fetchone()
        return None if row is None else _notification(row)

    def set_read(self, owner_id: str, note_id: str | None, read_at: float | None) -> int:
        """Mark one (or, with note_id None, all) of a user's notifications read or unread."""
        if note_id is None:
            cursor = self._db.execute(
                "UPDATE notifications SET read_at = ? WHERE owner_id = ? AND read_at IS NULL", (read_at, owner_id)
            )
        else:
            cursor = self._db.execute(
                "UPDATE notifications SET read_at = ? WHERE owner_id = ? AND id = ?", (read_at, owner_id, note_id)
            )
        return int(cursor.rowcount)

    def delete_notification(self, owner_id: str, note_id: str) -> int:
        cursor = self._db.execute("DELETE FROM notifications WHERE owner_id = ? AND id = ?", (owner_id, note_id))
        return int(cursor.rowcount)


def _webhook(row: sqlite3.Row) -> Webhook:
    return Webhook(
        id=row["id"], owner_id=row["owner_id"], url=row["url"], events=json.loads(row["events"]),
        secret=row["secret"], description=row["description"], active=bool(row["active"]),
        created_at=row["created_at"], updated_at=row["updated_at"],
    )  # fmt: skip


def _delivery(row: sqlite3.Row) -> Delivery:
    return Delivery(**{k: row[k] for k in row.keys()})  # noqa: SIM118


def _notification(row: sqlite3.Row) -> Notification:
    fields = {k: row[k] for k in row.keys()}  # noqa: SIM118
    return Notification(**{**fields, "data": json.loads(fields["data"])})
