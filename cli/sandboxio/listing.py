"""Directory entries as the rows of `sandbox ls`'s table. Pure.

Columns follow `ls -l`, which is what a user reading a sandbox's files
expects: permissions, owner, group, size, modification time, name. Times are
shown in the local time zone; JSON output keeps the agent's RFC 3339 text.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, tzinfo

from cli.sandboxio.messages import Entry

HEADERS = ("PERMISSIONS", "OWNER", "GROUP", "SIZE", "MODIFIED", "NAME")


def rows(entries: Sequence[Entry], *, depth: int, tz: tzinfo | None = None) -> list[tuple[str, ...]]:
    # Deeper listings name each entry by its path: bare names would be ambiguous.
    ordered = sorted(entries, key=lambda e: e.path if depth > 1 else e.name)
    return [
        (
            entry.permissions or "?",
            entry.owner,
            entry.group,
            str(entry.size),
            format_time(entry.modified_time, tz),
            display_name(entry, full_path=depth > 1),
        )
        for entry in ordered
    ]


def display_name(entry: Entry, *, full_path: bool = False) -> str:
    name = entry.path if full_path else entry.name
    if entry.symlink_target is not None:
        return f"{name} -> {entry.symlink_target}"
    if entry.type == "directory":
        return name + "/"
    return name


def format_time(rfc3339: str, tz: tzinfo | None = None) -> str:
    if not rfc3339:
        return ""
    try:
        when = datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))
    except ValueError:
        return rfc3339
    return when.astimezone(tz).strftime("%Y-%m-%d %H:%M")
