"""Printing answers: rich tables for people, the API's `data` verbatim for programs.

`emit(data, settings, columns=...)`:

- `-o json` / `-o json-compact`: `data` exactly as the API gave it, nothing added;
- `-o table` (the default): `rows` (default `data`) as a table. A list of mappings
  is one row each; a single mapping is shown vertically, one field per line; a list
  of strings prints line by line. `columns` picks and labels the fields: each is
  `(header, key)` or `(header, function of the row)`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cli.context import Settings

Getter = str | Callable[[Mapping[str, Any]], Any]
Column = tuple[str, Getter]

_UNSET: Any = object()


def render_json(data: Any, *, compact: bool) -> str:
    if compact:
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return json.dumps(data, indent=2, ensure_ascii=False)


def console(*, stderr: bool = False) -> Console:
    out = Console(stderr=stderr, highlight=False, soft_wrap=False)
    # Piped into grep or a file, rich would assume 80 columns and wrap IDs across
    # lines; wide tables stay one line per row unless the user sets COLUMNS.
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out.width = 200
    return out


def cell(value: Any) -> str:
    """One value as table text: None as '-', maps as k=v, lists comma-separated."""
    if value is None or value == "" or value == [] or value == {}:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={cell(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(cell(v) for v in value)
    return str(value)


def get(row: Mapping[str, Any], getter: Getter) -> Any:
    return getter(row) if callable(getter) else row.get(getter)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> Table:
    out = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for header, _ in columns:
        # IDs and URLs must stay whole to be copied; long free text folds instead.
        out.add_column(header, no_wrap=header in ("ID", "URL", "SANDBOX"), overflow="fold")
    for row in rows:
        # Text, not str: a value holding "[red]" is data, not rich markup.
        out.add_row(*(Text(cell(get(row, getter))) for _, getter in columns))
    return out


def fields(row: Mapping[str, Any], columns: Sequence[Column] | None) -> Table:
    out = Table(box=None, show_header=False, pad_edge=False)
    out.add_column(style="bold", no_wrap=True)
    out.add_column(overflow="fold")
    pairs = [(h, get(row, g)) for h, g in columns] if columns else [(k, v) for k, v in row.items()]
    for header, value in pairs:
        out.add_row(Text(header), Text(cell(value)))
    return out


def emit(
    data: Any,
    settings: Settings,
    *,
    columns: Sequence[Column] | None = None,
    rows: Any = _UNSET,
    empty: str | None = "nothing to show",
) -> None:
    if settings.json_output:
        click.echo(render_json(data, compact=settings.output == "json-compact"))
        return
    shown = data if rows is _UNSET else rows
    if isinstance(shown, list) and not shown:
        # On stderr: a script reading the table gets no rows, a person gets a hint.
        if empty:
            click.echo(empty, err=True)
    elif isinstance(shown, Mapping):
        show(fields(shown, columns))
    elif isinstance(shown, list) and all(isinstance(r, str) for r in shown):
        # Log lines and the like: printed raw, never through rich's markup or wrapping.
        for line in shown:
            click.echo(line)
    elif isinstance(shown, list):
        show(table(shown, columns or [(str(k).upper(), str(k)) for k in shown[0]]))
    else:
        click.echo(cell(shown))


def show(renderable: Table) -> None:
    out = console()
    if out.is_terminal:
        out.print(renderable)
        return
    # Piped: rich pads every cell to its column's width; trailing blanks only get in grep's and diff's way.
    with out.capture() as captured:
        out.print(renderable)
    click.echo("\n".join(line.rstrip() for line in captured.get().splitlines()))


# -- small formatters for table cells ----------------------------------------------------


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s" if seconds < 600 else f"{seconds // 60}m"
    if seconds < 86_400:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    return f"{seconds // 86_400}d{(seconds % 86_400) // 3600:02d}h"


def age(value: Any, now: datetime | None = None) -> str:
    """`2024-05-01T10:00:00Z` -> `5m ago`; anything unparseable as is."""
    when = parse_time(value)
    if when is None:
        return cell(value)
    now = now or datetime.now(UTC)
    return f"{duration((now - when).total_seconds())} ago"


@contextmanager
def progress(message: str) -> Iterator[None]:
    """A spinner on stderr while a long call runs; only on a terminal, so logs and pipes stay clean."""
    err = console(stderr=True)
    if not err.is_terminal or not sys.stderr.isatty():
        yield
        return
    with err.status(message, spinner="dots"):
        yield
