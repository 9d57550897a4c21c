"""`scalebox template ...`: the templates sandboxes start from."""

from __future__ import annotations

from collections.abc import Sequence

import click

from cli.client import ApiClient, segment
from cli.context import settings_from
from cli.options import global_options
from cli.output import Column, emit

template = click.Group("template", help="Templates sandboxes are created from.")

COLUMNS: Sequence[Column] = (
    ("ID", "template_id"),
    ("NAME", "name"),
    ("IMAGE", "image"),
    ("USER", "user"),
    ("START COMMAND", "start_cmd"),
)

DETAIL_COLUMNS: Sequence[Column] = (
    ("ID", "template_id"),
    ("Name", "name"),
    ("Image", "image"),
    ("User", "user"),
    ("Start command", "start_cmd"),
)


@template.command("list")
@global_options
@click.pass_context
def list_templates(ctx: click.Context) -> None:
    """List the templates this appliance can start."""
    settings = settings_from(ctx)
    with ApiClient(settings) as api:
        data = api.request("GET", "/templates", params={"limit": 1000})
    rows = data.get("templates", []) if isinstance(data, dict) else []
    emit(data, settings, rows=rows, columns=COLUMNS, empty="no templates")


@template.command("get")
@click.argument("template_id", metavar="ID")
@global_options
@click.pass_context
def get_template(ctx: click.Context, template_id: str) -> None:
    """Show one template."""
    settings = settings_from(ctx)
    with ApiClient(settings) as api:
        data = api.request("GET", f"/templates/{segment(template_id)}")
    emit(data, settings, columns=DETAIL_COLUMNS)
