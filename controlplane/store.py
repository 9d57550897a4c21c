"""SQLite persistence: the truth about sandboxes and API keys.

WAL mode with synchronous=NORMAL: a committed transaction survives a `kill -9` of the
appliance (only a power loss may drop the last commits), and commits cost no fsync.
Queries are primary-key or small-table scans that take microseconds, so the store is
called directly from the Trio thread: a worker thread per query would cost more than
the query and would need its own locking.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controlplane.lifecycle.states import State
from controlplane.records import ApiKeyRecord, SandboxRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sandboxes (
    id TEXT PRIMARY KEY,
    template_id TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    container_id TEXT,
    ip TEXT,
    cpu_count INTEGER NOT NULL,
    memory_mb INTEGER NOT NULL,
    storage_gb INTEGER NOT NULL,
    timeout INTEGER NOT NULL,
    auto_pause INTEGER NOT NULL,
    allow_internet_access INTEGER NOT NULL,
    secure INTEGER NOT NULL,
    is_async INTEGER NOT NULL,
    name TEXT,
    metadata TEXT NOT NULL,
    env_vars TEXT NOT NULL,
    custom_ports TEXT NOT NULL,
    port_tokens TEXT NOT NULL DEFAULT '[]',
    runtime TEXT NOT NULL DEFAULT 'runc',
    egress TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    timeout_at REAL,
    paused_at REAL,
    ended_at REAL
);
CREATE INDEX IF NOT EXISTS sandboxes_state ON sandboxes (state);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    secret_hash BLOB NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);
"""

_SANDBOX_COLUMNS = (
    "id",
    "template_id",
    "state",
    "reason",
    "container_id",
    "ip",
    "cpu_count",
    "memory_mb",
    "storage_gb",
    "timeout",
    "auto_pause",
    "allow_internet_access",
    "secure",
    "is_async",
    "name",
    "metadata",
    "env_vars",
    "custom_ports",
    "port_tokens",
    "runtime",
    "egress",
    "created_at",
    "updated_at",
    "started_at",
    "timeout_at",
    "paused_at",
    "ended_at",
)
_JSON_COLUMNS = {"metadata", "env_vars", "custom_ports", "port_tokens", "egress"}
_BOOL_COLUMNS = {"auto_pause", "allow_internet_access", "secure", "is_async"}


@dataclass(frozen=True, kw_only=True)
class SandboxQuery:
    states: frozenset[State] | None = None
    metadata: dict[str, str] | None = None
    limit: int = 100
    offset: int = 0


class Store:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        _migrate(self._db)
        # Counts writes to the sandbox table: what the gateway's route cache keys on.
        self.sandboxes_version = 0

    def close(self) -> None:
        self._db.close()

    # -- sandboxes -------------------------------------------------------------

    def put_sandbox(self, record: SandboxRecord) -> None:
        """Insert or replace the whole row in one transaction."""
        self.sandboxes_version += 1
        values = [_to_sql(col, getattr(record, col)) for col in _SANDBOX_COLUMNS]
        placeholders = ",".join("?" * len(_SANDBOX_COLUMNS))
        self._db.execute(
            f"INSERT OR REPLACE INTO sandboxes ({','.join(_SANDBOX_COLUMNS)}) VALUES ({placeholders})",
            values,
        )

    def get_sandbox(self, sandbox_id: str) -> SandboxRecord | None:
        row = self._db.execute("SELECT * FROM sandboxes WHERE id = ?", (sandbox_id,)).fetchone()
        return _sandbox_from_row(row) if row else None

    def delete_sandbox(self, sandbox_id: str) -> None:
        self.sandboxes_version += 1
        self._db.execute("DELETE FROM sandboxes WHERE id = ?", (sandbox_id,))

    def sandboxes_in(self, states: Iterable[State]) -> list[SandboxRecord]:
        wanted = [s.value for s in states]
        rows = self._db.execute(
            f"SELECT * FROM sandboxes WHERE state IN ({','.join('?' * len(wanted))}) ORDER BY created_at",
            wanted,
        ).fetchall()
        return [_sandbox_from_row(r) for r in rows]

    def list_sandboxes(self, query: SandboxQuery) -> tuple[list[SandboxRecord], int]:
        """One page of sandboxes, newest first, and the total that match."""
        where: list[str] = []
        args: list[object] = []
        if query.states is not None:
            where.append(f"state IN ({','.join('?' * len(query.states))})")
            args.extend(s.value for s in sorted(query.states))
        for key, value in (query.metadata or {}).items():
            # json_each compares decoded keys: a JSON path cannot spell a key holding '"'.
            where.append("EXISTS (SELECT 1 FROM json_each(metadata) WHERE key = ? AND value = ?)")
            args.extend([key, value])
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        total = self._db.execute(f"SELECT COUNT(*) FROM sandboxes {clause}", args).fetchone()[0]
        rows = self._db.execute(
            f"SELECT * FROM sandboxes {clause} ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
            [*args, query.limit, query.offset],
        ).fetchall()
        return [_sandbox_from_row(r) for r in rows], int(total)

    # -- api keys --------------------------------------------------------------

    def put_api_key(self, key: ApiKeyRecord) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO api_keys (id, name, secret_hash, prefix, created_at, revoked_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (key.id, key.name, key.secret_hash, key.prefix, key.created_at, key.revoked_at),
        )

    def api_key_by_hash(self, secret_hash: bytes) -> ApiKeyRecord | None:
        row = self._db.execute("SELECT * FROM api_keys WHERE secret_hash = ?", (secret_hash,)).fetchone()
        if row is None:
            return None
        return ApiKeyRecord(**{k: row[k] for k in row.keys()})  # noqa: SIM118

    def count_api_keys(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM api_keys").fetchone()[0])


# Columns added after the first release: (name, definition). A data dir made by an
# older appliance gets them on its next start.
_ADDED_COLUMNS = (
    ("port_tokens", "TEXT NOT NULL DEFAULT '[]'"),
    # Sandboxes from before runtimes could be chosen all ran on runc.
    ("runtime", "TEXT NOT NULL DEFAULT 'runc'"),
    # Sandboxes from before egress lists had none.
    ("egress", "TEXT NOT NULL DEFAULT '{}'"),
)


def _migrate(db: sqlite3.Connection) -> None:
    have = {row[1] for row in db.execute("PRAGMA table_info(sandboxes)")}
    for name, definition in _ADDED_COLUMNS:
        if name not in have:
            db.execute(f"ALTER TABLE sandboxes ADD COLUMN {name} {definition}")


def _to_sql(column: str, value: Any) -> Any:
    if column in _JSON_COLUMNS:
        return json.dumps(value, separators=(",", ":"))
    if column in _BOOL_COLUMNS:
        return int(bool(value))
    if column == "state":
        return State(value).value
    return value


def _sandbox_from_row(row: sqlite3.Row) -> SandboxRecord:
    fields: dict[str, Any] = {}
    for col in _SANDBOX_COLUMNS:
        value = row[col]
        if col in _JSON_COLUMNS:
            value = json.loads(value)
        elif col in _BOOL_COLUMNS:
            value = bool(value)
        elif col == "state":
            value = State(value)
        fields[col] = value
    return SandboxRecord(**fields)


class RouteReader:
    """What a gateway worker process needs of the store: a sandbox's row, read-only.

    ``version()`` is SQLite's data_version: it changes whenever another
    connection (the appliance's own Store) commits, which is what a worker's
    route cache keys on.
    """

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA busy_timeout=5000")

    def sandbox_view(self, sandbox_id: str) -> SandboxRecord | None:
        row = self._db.execute("SELECT * FROM sandboxes WHERE id = ?", (sandbox_id,)).fetchone()
        return None if row is None else _sandbox_from_row(row)

    def version(self) -> int:
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def close(self) -> None:
        self._db.close()
