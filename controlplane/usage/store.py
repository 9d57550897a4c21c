"""SQLite persistence of usage: hour buckets, the last counter reading, sessions, final invoices.

On the `Store`'s own connection (controlplane/store.py), in tables of its own. A
sample adds to its sandbox's bucket of the hour (an upsert), so the table grows
by one row per sandbox per hour it lived, not per sample. The last reading of
each sandbox's CPU counter is kept with the buckets, in the same transaction, so a
restart of the appliance neither loses nor counts twice the CPU used meanwhile.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from controlplane.usage.calc import USAGE_FIELDS, Usage

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage_hours (
    sandbox_id TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    hour INTEGER NOT NULL,
    cpu_seconds REAL NOT NULL DEFAULT 0,
    memory_gb_seconds REAL NOT NULL DEFAULT 0,
    storage_gb_seconds REAL NOT NULL DEFAULT 0,
    bytes_in INTEGER NOT NULL DEFAULT 0,
    bytes_out INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (sandbox_id, hour)
);
CREATE INDEX IF NOT EXISTS usage_hours_owner ON usage_hours (owner_id, hour);
CREATE TABLE IF NOT EXISTS usage_readings (
    sandbox_id TEXT PRIMARY KEY,
    container_id TEXT NOT NULL,
    cpu_total REAL NOT NULL,
    sampled_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS usage_sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sandbox_id TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    cpu_count INTEGER NOT NULL,
    memory_mb INTEGER NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    end_event TEXT
);
CREATE INDEX IF NOT EXISTS usage_sessions_owner ON usage_sessions (owner_id, started_at);
CREATE INDEX IF NOT EXISTS usage_sessions_open ON usage_sessions (sandbox_id, ended_at);
CREATE TABLE IF NOT EXISTS usage_invoices (
    owner_id TEXT NOT NULL,
    period TEXT NOT NULL,
    body TEXT NOT NULL,
    finalized_at REAL NOT NULL,
    PRIMARY KEY (owner_id, period)
);
"""

_SUMS = ", ".join(f"SUM({name})" for name in USAGE_FIELDS)


@dataclass(frozen=True, kw_only=True)
class Reading:
    """The last reading of a sandbox's cumulative CPU counter."""

    container_id: str
    cpu_total: float
    sampled_at: float


@dataclass(frozen=True, kw_only=True)
class Bucketed:
    """Usage to add to a sandbox's bucket of one hour."""

    sandbox_id: str
    owner_id: str
    hour: int
    usage: Usage


@dataclass(frozen=True, kw_only=True)
class Session:
    id: int
    sandbox_id: str
    owner_id: str
    cpu_count: int
    memory_mb: int
    started_at: float
    ended_at: float | None
    end_event: str | None


@dataclass(frozen=True, kw_only=True)
class Capacity:
    """What a user's sessions could have used: the denominators of average utilisation."""

    uptime_seconds: float
    cpu_seconds: float
    memory_gb_seconds: float


def _usage(row: Iterable[Any]) -> Usage:
    return Usage(**{name: value or 0 for name, value in zip(USAGE_FIELDS, row, strict=True)})


class UsageStore:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._db.executescript(_SCHEMA)

    # -- samples -------------------------------------------------------------------

    def record(self, buckets: Iterable[Bucketed], readings: dict[str, Reading]) -> None:
        """Add to the buckets and replace the readings, all in one transaction."""
        with self._db:
            self._db.execute("BEGIN")
            for b in buckets:
                u = b.usage
                self._db.execute(
                    f"INSERT INTO usage_hours (sandbox_id, owner_id, hour, {', '.join(USAGE_FIELDS)})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sandbox_id, hour) DO UPDATE SET "
                    + ", ".join(f"{name} = {name} + excluded.{name}" for name in USAGE_FIELDS),
                    (b.sandbox_id, b.owner_id, b.hour, *(getattr(u, name) for name in USAGE_FIELDS)),
                )
            for sandbox_id, r in readings.items():
                self._db.execute(
                    "INSERT OR REPLACE INTO usage_readings (sandbox_id, container_id, cpu_total, sampled_at)"
                    " VALUES (?, ?, ?, ?)",
                    (sandbox_id, r.container_id, r.cpu_total, r.sampled_at),
                )

    def readings(self) -> dict[str, Reading]:
        rows = self._db.execute("SELECT sandbox_id, container_id, cpu_total, sampled_at FROM usage_readings")
        return {r[0]: Reading(container_id=r[1], cpu_total=r[2], sampled_at=r[3]) for r in rows.fetchall()}

    def forget_readings(self, sandbox_ids: Iterable[str]) -> None:
        self._db.executemany("DELETE FROM usage_readings WHERE sandbox_id = ?", [(s,) for s in sandbox_ids])

    # -- totals --------------------------------------------------------------------

    def per_sandbox(
        self, owner_id: str, start: float | None = None, end: float | None = None, sandbox_id: str | None = None
    ) -> dict[str, Usage]:
        """Each of a user's sandboxes' usage in the buckets from the hour holding `start` to before `end`."""
        where, args = self._window(owner_id, start, end, sandbox_id)
        rows = self._db.execute(
            f"SELECT sandbox_id, {_SUMS} FROM usage_hours WHERE {where} GROUP BY sandbox_id ORDER BY sandbox_id", args
        ).fetchall()
        return {str(r[0]): _usage(tuple(r)[1:]) for r in rows}

    def per_period(self, owner_id: str) -> dict[str, Usage]:
        """A user's usage per UTC calendar month (`YYYY-MM`), oldest first."""
        rows = self._db.execute(
            f"SELECT strftime('%Y-%m', hour, 'unixepoch') AS period, {_SUMS} FROM usage_hours"
            " WHERE owner_id = ? GROUP BY period ORDER BY period",
            (owner_id,),
        ).fetchall()
        return {str(r[0]): _usage(tuple(r)[1:]) for r in rows}

    def _window(
        self, owner_id: str, start: float | None, end: float | None, sandbox_id: str | None
    ) -> tuple[str, list[object]]:
        where: list[str] = ["owner_id = ?"]
        args: list[object] = [owner_id]
        if start is not None:
            # The bucket holding `start` counts: buckets are the resolution.
            where.append("hour > ? - 3600")
            args.append(start)
        if end is not None:
            where.append("hour < ?")
            args.append(end)
        if sandbox_id is not None:
            where.append("sandbox_id = ?")
            args.append(sandbox_id)
        return " AND ".join(where), args

    # -- sessions ------------------------------------------------------------------

    def open_session(self, *, sandbox_id: str, owner_id: str, cpu_count: int, memory_mb: int, at: float) -> None:
        """A running interval begins, unless one is open already (a repeated event)."""
        if self.open_session_of(sandbox_id) is not None:
            return
        self._db.execute(
            "INSERT INTO usage_sessions (sandbox_id, owner_id, cpu_count, memory_mb, started_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (sandbox_id, owner_id, cpu_count, memory_mb, at),
        )

    def close_session(self, sandbox_id: str, *, at: float, event: str) -> None:
        self._db.execute(
            "UPDATE usage_sessions SET ended_at = MAX(started_at, ?), end_event = ?"
            " WHERE sandbox_id = ? AND ended_at IS NULL",
            (at, event, sandbox_id),
        )

    def open_session_of(self, sandbox_id: str) -> Session | None:
        row = self._db.execute(
            "SELECT * FROM usage_sessions WHERE sandbox_id = ? AND ended_at IS NULL ORDER BY id DESC LIMIT 1",
            (sandbox_id,),
        ).fetchone()
        return None if row is None else _session(row)

    def open_sessions(self) -> list[Session]:
        rows = self._db.execute("SELECT * FROM usage_sessions WHERE ended_at IS NULL ORDER BY id").fetchall()
        return [_session(r) for r in rows]

    def sessions(
        self, owner_id: str, *, sandbox_id: str | None = None, limit: int = 100, offset: int = 0
    ) -> tuple[list[Session], int]:
        """One page of a user's sessions, newest first, and how many there are."""
        where, args = "owner_id = ?", [owner_id]
        if sandbox_id is not None:
            where += " AND sandbox_id = ?"
            args.append(sandbox_id)
        count = self._db.execute(f"SELECT COUNT(*) FROM usage_sessions WHERE {where}", args).fetchone()[0]
        rows = self._db.execute(
            f"SELECT * FROM usage_sessions WHERE {where} ORDER BY started_at DESC, id DESC LIMIT ? OFFSET ?",
            [*args, limit, offset],
        ).fetchall()
        return [_session(r) for r in rows], int(count)

    def capacity(self, owner_id: str, now: float) -> Capacity:
        """Seconds a user's sandboxes ran (an open session up to `now`), and the CPU and memory that bought."""
        row = self._db.execute(
            "SELECT SUM(d), SUM(d * cpu_count), SUM(d * memory_mb / 1024.0) FROM"
            " (SELECT MAX(0, COALESCE(ended_at, ?) - started_at) AS d, cpu_count, memory_mb"
            "  FROM usage_sessions WHERE owner_id = ?)",
            (now, owner_id),
        ).fetchone()
        return Capacity(uptime_seconds=row[0] or 0.0, cpu_seconds=row[1] or 0.0, memory_gb_seconds=row[2] or 0.0)

    # -- invoices ------------------------------------------------------------------

    def final_invoice(self, owner_id: str, period: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT body FROM usage_invoices WHERE owner_id = ? AND period = ?", (owner_id, period)
        ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def finalize_invoice(self, owner_id: str, period: str, body: dict[str, Any], at: float) -> dict[str, Any]:
        """Keep a closed month's invoice as it is now; the first one kept wins (prices may change later)."""
        self._db.execute(
            "INSERT OR IGNORE INTO usage_invoices (owner_id, period, body, finalized_at) VALUES (?, ?, ?, ?)",
            (owner_id, period, json.dumps(body, separators=(",", ":")), at),
        )
        kept = self.final_invoice(owner_id, period)
        assert kept is not None
        return kept


def _session(row: sqlite3.Row) -> Session:
    return Session(**{k: row[k] for k in row.keys()})  # noqa: SIM118
