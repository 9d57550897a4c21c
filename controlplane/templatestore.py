"""SQLite persistence of users' templates and the logs of their builds.

On the `Store`'s own connection (controlplane/store.py), in tables of its own.
Built-in templates are not stored: they are a table in controlplane/templates.py.

A build's log keeps only its last MAX_LOG_LINES lines: a chatty `RUN` must not
grow the database without bound.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from typing import Any

from controlplane.errors import Conflict
from controlplane.ports import PortRequest
from controlplane.templates import BUILDING, FAILED, Template

MAX_LOG_LINES = 2000
# Longest log line kept; the rest of it is cut.
MAX_LINE = 4000
# Trimming deletes rows, so it runs every this many lines, not on each.
_TRIM_EVERY = 100

_SCHEMA = """
CREATE TABLE IF NOT EXISTS templates (
    id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL,
    name TEXT NOT NULL,
    image TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    source TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    cpu_count INTEGER,
    memory_mb INTEGER,
    ports TEXT NOT NULL DEFAULT '[]',
    start_cmd TEXT,
    ready_cmd TEXT,
    runtime TEXT NOT NULL DEFAULT 'runc',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (owner_id, name)
);
CREATE TABLE IF NOT EXISTS template_build_logs (
    template_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    line TEXT NOT NULL,
    PRIMARY KEY (template_id, seq)
);
"""

_COLUMNS = (
    "id",
    "owner_id",
    "name",
    "image",
    "status",
    "reason",
    "source",
    "description",
    "cpu_count",
    "memory_mb",
    "ports",
    "start_cmd",
    "ready_cmd",
    "runtime",
    "created_at",
    "updated_at",
)


class TemplateStore:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._db.executescript(_SCHEMA)
        # The next sequence number of each template's log, kept here to append without a query.
        self._next_seq: dict[str, int] = {}

    # -- templates ---------------------------------------------------------------

    def insert(self, template: Template) -> None:
        """Add a new template; Conflict when its owner has one of that name already."""
        if template.owner_id is None:
            raise ValueError("built-in templates are not stored")
        try:
            self._db.execute(
                f"INSERT INTO templates ({','.join(_COLUMNS)}) VALUES ({','.join('?' * len(_COLUMNS))})",
                _to_row(template),
            )
        except sqlite3.IntegrityError:
            raise _name_taken(template.name) from None

    def update(self, template: Template) -> None:
        """Replace a stored template's row; Conflict when the new name is taken."""
        assignments = ",".join(f"{c} = ?" for c in _COLUMNS[1:])
        try:
            self._db.execute(f"UPDATE templates SET {assignments} WHERE id = ?", [*_to_row(template)[1:], template.id])
        except sqlite3.IntegrityError:
            raise _name_taken(template.name) from None

    def get(self, template_id: str) -> Template | None:
        row = self._db.execute("SELECT * FROM templates WHERE id = ?", (template_id,)).fetchone()
        return None if row is None else _from_row(row)

    def by_name(self, owner_id: str, name: str) -> Template | None:
        row = self._db.execute("SELECT * FROM templates WHERE owner_id = ? AND name = ?", (owner_id, name)).fetchone()
        return None if row is None else _from_row(row)

    def list_of(self, owner_id: str) -> list[Template]:
        rows = self._db.execute(
            "SELECT * FROM templates WHERE owner_id = ? ORDER BY created_at, id", (owner_id,)
        ).fetchall()
        return [_from_row(r) for r in rows]

    def delete(self, template_id: str) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM template_build_logs WHERE template_id = ?", (template_id,))
            self._db.execute("DELETE FROM templates WHERE id = ?", (template_id,))
        self._next_seq.pop(template_id, None)

    def fail_unfinished(self, now: float) -> list[str]:
        """Builds under way when the appliance stopped never finish: mark them failed."""
        rows = self._db.execute("SELECT id FROM templates WHERE status = ?", (BUILDING,)).fetchall()
        ids = [str(r[0]) for r in rows]
        for template_id in ids:
            template = self.get(template_id)
            if template is not None:
                self.update(
                    replace(template, status=FAILED, reason="the appliance restarted during the build", updated_at=now)
                )
        return ids

    # -- build logs --------------------------------------------------------------

    def append_log(self, template_id: str, line: str) -> None:
        seq = self._next_seq.get(template_id)
        if seq is None:
            row = self._db.execute(
                "SELECT COALESCE(MAX(seq), -1) FROM template_build_logs WHERE template_id = ?", (template_id,)
            ).fetchone()
            seq = int(row[0]) + 1
        self._next_seq[template_id] = seq + 1
        self._db.execute(
            "INSERT INTO template_build_logs (template_id, seq, line) VALUES (?, ?, ?)",
            (template_id, seq, line[:MAX_LINE]),
        )
        if seq % _TRIM_EVERY == 0 and seq >= MAX_LOG_LINES:
            self._db.execute(
                "DELETE FROM template_build_logs WHERE template_id = ? AND seq <= ?",
                (template_id, seq - MAX_LOG_LINES),
            )

    def log_lines(self, template_id: str, tail: int = MAX_LOG_LINES) -> list[str]:
        """The last `tail` lines of the template's build log (at most MAX_LOG_LINES), oldest first."""
        rows = self._db.execute(
            "SELECT line FROM template_build_logs WHERE template_id = ? ORDER BY seq DESC LIMIT ?",
            (template_id, min(tail, MAX_LOG_LINES)),
        ).fetchall()
        return [str(r[0]) for r in reversed(rows)]

    def count_log_lines(self, template_id: str) -> int:
        row = self._db.execute("SELECT COUNT(*) FROM template_build_logs WHERE template_id = ?", (template_id,))
        return int(row.fetchone()[0])


def _name_taken(name: str) -> Conflict:
    return Conflict(f"you already have a template named {name!r}; choose another name", code="template_exists")


def _to_row(t: Template) -> list[Any]:
    ports = [p.stored(p.host_port) for p in t.ports]
    values: dict[str, Any] = {
        "id": t.id,
        "owner_id": t.owner_id,
        "name": t.name,
        "image": t.image,
        "status": t.status,
        "reason": t.reason,
        "source": t.source,
        "description": t.description,
        "cpu_count": t.cpu_count,
        "memory_mb": t.memory_mb,
        "ports": json.dumps(ports, separators=(",", ":")),
        "start_cmd": t.start_cmd,
        "ready_cmd": t.ready_cmd,
        "runtime": t.runtime,
        "created_at": t.created_at,
        "updated_at": t.updated_at,
    }
    return [values[c] for c in _COLUMNS]


def _from_row(row: sqlite3.Row) -> Template:
    return Template(
        id=row["id"],
        owner_id=row["owner_id"],
        name=row["name"],
        image=row["image"],
        status=row["status"],
        reason=row["reason"],
        source=row["source"],
        description=row["description"],
        cpu_count=row["cpu_count"],
        memory_mb=row["memory_mb"],
        ports=tuple(PortRequest(**p) for p in json.loads(row["ports"])),
        start_cmd=row["start_cmd"],
        ready_cmd=row["ready_cmd"],
        runtime=row["runtime"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )
