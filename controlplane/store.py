"""SQLite persistence: the truth about sandboxes, users and API keys.

WAL mode with synchronous=NORMAL: a committed transaction survives a `kill -9` of the
appliance (only a power loss may drop the last commits), and commits cost no fsync.
Queries are primary-key or small-table scans that take microseconds, so the store is
called directly from the Trio thread: a worker thread per query would cost more than
the query and would need its own locking.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controlplane.hooks.store import HooksStore
from controlplane.lifecycle.states import State
from controlplane.records import ApiKeyRecord, ProjectRecord, SandboxRecord, UserRecord
from controlplane.templatestore import TemplateStore
from controlplane.usage.store import UsageStore

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
    owner_id TEXT NOT NULL DEFAULT 'usr-admin',
    project_id TEXT NOT NULL DEFAULT '',
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
    user_id TEXT NOT NULL DEFAULT 'usr-admin',
    name TEXT NOT NULL,
    secret_hash BLOB NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    disabled_at REAL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS projects (
    id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    is_default INTEGER NOT NULL DEFAULT 0,
    sandboxes_connect INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (owner_id, name)
);
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    created_at REAL NOT NULL,
    disabled_at REAL
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
    "owner_id",
    "project_id",
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
    # Only this user's sandboxes; None: everyone's (the appliance's own loops).
    owner_id: str | None = None
    project_id: str | None = None
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
        # Users' templates and their build logs, in tables of their own on this connection.
        self.templates = TemplateStore(self._db)
        self.hooks = HooksStore(self._db)
        # Metered usage, sessions and final invoices (controlplane/usage/).
        self.usage = UsageStore(self._db)
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
        if query.owner_id is not None:
            where.append("owner_id = ?")
            args.append(query.owner_id)
        if query.project_id is not None:
            where.append("project_id = ?")
            args.append(query.project_id)
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
        values = {f.name: getattr(key, f.name) for f in dataclasses.fields(ApiKeyRecord)}
        self._db.execute(
            f"INSERT OR REPLACE INTO api_keys ({','.join(values)}) VALUES ({','.join('?' * len(values))})",
            list(values.values()),
        )

    def api_key_by_hash(self, secret_hash: bytes) -> ApiKeyRecord | None:
        row = self._db.execute("SELECT * FROM api_keys WHERE secret_hash = ?", (secret_hash,)).fetchone()
        return None if row is None else _api_key_from_row(row)

    def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        row = self._db.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        return None if row is None else _api_key_from_row(row)

    def api_keys_of(self, user_id: str) -> list[ApiKeyRecord]:
        rows = self._db.execute(
            "SELECT * FROM api_keys WHERE user_id = ? AND revoked_at IS NULL ORDER BY created_at, id", (user_id,)
        ).fetchall()
        return [_api_key_from_row(r) for r in rows]

    def delete_api_key(self, key_id: str) -> None:
        self._db.execute("DELETE FROM api_keys WHERE id = ?", (key_id,))

    def count_api_keys(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM api_keys").fetchone()[0])

    # -- projects --------------------------------------------------------------

    def put_project(self, project: ProjectRecord) -> None:
        values = {f.name: getattr(project, f.name) for f in dataclasses.fields(ProjectRecord)}
        values["is_default"] = int(project.is_default)
        values["sandboxes_connect"] = int(project.sandboxes_connect)
        self.sandboxes_version += 1  # the firewall's peers follow projects too
        self._db.execute(
            f"INSERT OR REPLACE INTO projects ({','.join(values)}) VALUES ({','.join('?' * len(values))})",
            list(values.values()),
        )

    def get_project(self, project_id: str) -> ProjectRecord | None:
        row = self._db.execute("SELECT * FROM projects WHERE id = ?", (project_id,)).fetchone()
        return None if row is None else _project_from_row(row)

    def project_by_name(self, owner_id: str, name: str) -> ProjectRecord | None:
        row = self._db.execute("SELECT * FROM projects WHERE owner_id = ? AND name = ?", (owner_id, name)).fetchone()
        return None if row is None else _project_from_row(row)

    def default_project(self, owner_id: str) -> ProjectRecord | None:
        row = self._db.execute("SELECT * FROM projects WHERE owner_id = ? AND is_default = 1", (owner_id,)).fetchone()
        return None if row is None else _project_from_row(row)

    def projects_of(self, owner_id: str) -> list[ProjectRecord]:
        rows = self._db.execute("SELECT * FROM projects WHERE owner_id = ? ORDER BY created_at, id", (owner_id,))
        return [_project_from_row(r) for r in rows.fetchall()]

    def connecting_projects(self) -> set[str]:
        """Ids of the projects whose sandboxes may connect to each other directly."""
        rows = self._db.execute("SELECT id FROM projects WHERE sandboxes_connect = 1").fetchall()
        return {str(r[0]) for r in rows}

    def delete_project(self, project_id: str) -> None:
        self.sandboxes_version += 1
        self._db.execute("DELETE FROM projects WHERE id = ?", (project_id,))

    def count_sandboxes_in(self, project_id: str, states: Iterable[State]) -> int:
        wanted = [s.value for s in states]
        row = self._db.execute(
            f"SELECT COUNT(*) FROM sandboxes WHERE project_id = ? AND state IN ({','.join('?' * len(wanted))})",
            [project_id, *wanted],
        ).fetchone()
        return int(row[0])

    # -- users -----------------------------------------------------------------

    def put_user(self, user: UserRecord) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO users (id, name, role, created_at, disabled_at) VALUES (?, ?, ?, ?, ?)",
            (user.id, user.name, user.role, user.created_at, user.disabled_at),
        )

    def get_user(self, user_id: str) -> UserRecord | None:
        row = self._db.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone()
        return None if row is None else UserRecord(**{k: row[k] for k in row.keys()})  # noqa: SIM118

    def user_by_name(self, name: str) -> UserRecord | None:
        row = self._db.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()
        return None if row is None else UserRecord(**{k: row[k] for k in row.keys()})  # noqa: SIM118

    def list_users(self) -> list[UserRecord]:
        rows = self._db.execute("SELECT * FROM users ORDER BY created_at, id").fetchall()
        return [UserRecord(**{k: r[k] for k in r.keys()}) for r in rows]  # noqa: SIM118

    def delete_user(self, user_id: str) -> None:
        """The user and every key of theirs, in one transaction."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM api_keys WHERE user_id = ?", (user_id,))
            self._db.execute("DELETE FROM users WHERE id = ?", (user_id,))

    def count_sandboxes_of(self, user_id: str, states: Iterable[State]) -> int:
        wanted = [s.value for s in states]
        row = self._db.execute(
            f"SELECT COUNT(*) FROM sandboxes WHERE owner_id = ? AND state IN ({','.join('?' * len(wanted))})",
            [user_id, *wanted],
        ).fetchone()
        return int(row[0])


# Columns added after the first release: (name, definition). A data dir made by an
# older appliance gets them on its next start.
_ADDED_COLUMNS = (
    ("port_tokens", "TEXT NOT NULL DEFAULT '[]'"),
    # Sandboxes from before runtimes could be chosen all ran on runc.
    ("runtime", "TEXT NOT NULL DEFAULT 'runc'"),
    # Sandboxes from before egress lists had none.
    ("egress", "TEXT NOT NULL DEFAULT '{}'"),
    # Sandboxes from before users were the admin's (the only key there was).
    ("owner_id", "TEXT NOT NULL DEFAULT 'usr-admin'"),
    # Sandboxes from before projects are in none until moved ('' reads as the default).
    ("project_id", "TEXT NOT NULL DEFAULT ''"),
)
_ADDED_KEY_COLUMNS = (
    ("user_id", "TEXT NOT NULL DEFAULT 'usr-admin'"),
    ("expires_at", "REAL"),
    ("disabled_at", "REAL"),
)


def _migrate(db: sqlite3.Connection) -> None:
    for table, added in (("sandboxes", _ADDED_COLUMNS), ("api_keys", _ADDED_KEY_COLUMNS)):
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for name, definition in added:
            if name not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {definition}")
    # After the columns: an old database gets owner_id only above.
    db.execute("CREATE INDEX IF NOT EXISTS sandboxes_owner ON sandboxes (owner_id)")


def _to_sql(column: str, value: Any) -> Any:
    if column in _JSON_COLUMNS:
        return json.dumps(value, separators=(",", ":"))
    if column in _BOOL_COLUMNS:
        return int(bool(value))
    if column == "state":
        return State(value).value
    return value


def _project_from_row(row: sqlite3.Row) -> ProjectRecord:
    fields = {k: row[k] for k in row.keys()}  # noqa: SIM118
    return ProjectRecord(
        **{**fields, "is_default": bool(fields["is_default"]), "sandboxes_connect": bool(fields["sandboxes_connect"])}
    )


def _api_key_from_row(row: sqlite3.Row) -> ApiKeyRecord:
    return ApiKeyRecord(**{k: row[k] for k in row.keys()})  # noqa: SIM118


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
