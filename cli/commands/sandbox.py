"""`scalebox sandbox ...`: lifecycle, ports, URLs and logs of sandboxes.

The in-sandbox commands (exec, terminal, upload, download, ls) are added to this
same group by cli/commands/sandbox_io.py.

Commands taking several IDs act on each in turn; a failure about one sandbox (it
does not exist, its state forbids the action) is reported on its own line and
the rest go ahead, the exit code saying that something failed. With one ID
`-o json` prints the API's data for it; with several, a list of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

import click

from cli.client import ApiClient, segment
from cli.context import Settings, settings_from
from cli.errors import ApiError, CliError
from cli.options import global_options, key_values, output_option, sandbox_id_argument
from cli.output import Column, age, duration, emit, progress

# A create blocks until the sandbox's agent answers; starting a container can take a while.
CREATE_TIMEOUT = 600.0
STATUSES = ("starting", "running", "pausing", "paused", "resuming", "terminating", "terminated", "failed")

sandbox = click.Group("sandbox", help="Create, inspect and manage sandboxes.")


def _expires(row: Mapping[str, Any]) -> str:
    remaining = row.get("remaining_seconds")
    return f"in {duration(remaining)}" if isinstance(remaining, int | float) else "-"


def _memory(row: Mapping[str, Any]) -> str:
    memory = row.get("memory_mb")
    return f"{memory} MiB" if memory is not None else "-"


def _state(row: Mapping[str, Any]) -> Any:
    # `status` folds states for the official SDK; `state` is exact (pausing, failed...).
    return row.get("state") or row.get("status")


LIST_COLUMNS: Sequence[Column] = (
    ("ID", "sandbox_id"),
    ("STATE", _state),
    ("TEMPLATE", "template_id"),
    ("CPU", "cpu_count"),
    ("MEMORY", _memory),
    ("CREATED", lambda r: age(r.get("created_at"))),
    ("EXPIRES", _expires),
    ("METADATA", "metadata"),
)

DETAIL_COLUMNS: Sequence[Column] = (
    ("ID", "sandbox_id"),
    ("Name", "name"),
    ("State", _state),
    ("Reason", "reason"),
    ("Template", "template_id"),
    ("CPU", "cpu_count"),
    ("Memory", _memory),
    ("Storage", lambda r: f"{r['storage_gb']} GiB" if r.get("storage_gb") else "-"),
    ("Created", "created_at"),
    ("Started", "started_at"),
    ("Timeout", lambda r: f"{r['timeout']} s" if r.get("timeout") is not None else "-"),
    ("Expires", lambda r: f"{r.get('timeout_at')} ({_expires(r)})" if r.get("timeout_at") else "-"),
    ("Domain", "sandbox_domain"),
    ("Internet", "allow_internet_access"),
    ("Auto-pause", "auto_pause"),
    ("Metadata", "metadata"),
    ("Ports", lambda r: [f"{p.get('port')}/{p.get('name')}" for p in r.get("custom_ports") or []]),
)

BRIEF_COLUMNS: Sequence[Column] = (("ID", "sandbox_id"), ("STATE", _state), ("NOTE", "note"))

PORT_COLUMNS: Sequence[Column] = (
    ("PORT", "port"),
    ("NAME", "name"),
    ("PROTOCOL", "protocol"),
    ("ACCESS", "access"),
    ("ADDRESS", "address"),
    ("HOST PORT", "host_port"),
)


def each(
    ids: Sequence[str],
    action: Callable[[str], Any],
) -> tuple[list[Any], bool]:
    """Run `action` per ID; one-sandbox failures are printed and skipped, others stop the batch."""
    results: list[Any] = []
    failed = False
    for sandbox_id in ids:
        try:
            results.append(action(sandbox_id))
        except ApiError as exc:
            if len(ids) == 1 or not exc.about_one_sandbox:
                raise
            exc.show()
            failed = True
    return results, failed


def emit_batch(
    ctx: click.Context,
    settings: Settings,
    ids: Sequence[str],
    results: list[Any],
    failed: bool,
    columns: Sequence[Column] = BRIEF_COLUMNS,
) -> None:
    if len(ids) == 1:
        emit(results[0], settings, rows=results, columns=columns)
    elif results:
        emit(results, settings, columns=columns)
    if failed:
        ctx.exit(1)


def unique(ids: Sequence[str]) -> list[str]:
    # `delete a a` must not fail the second time on what the first just did.
    return list(dict.fromkeys(ids))


# -- lifecycle ------------------------------------------------------------------------------


@sandbox.command("list")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(STATUSES),
    help="only sandboxes in this state (repeatable; default: all but terminated)",
)
@click.option("-m", "--metadata", multiple=True, callback=key_values("a metadata filter"), metavar="KEY=VALUE",
              help="only sandboxes whose metadata has KEY=VALUE (repeatable)")  # fmt: skip
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True, help="at most this many")
@click.option("--page", type=click.IntRange(1), default=1, show_default=True, help="page of --limit results")
@global_options
@click.pass_context
def list_sandboxes(
    ctx: click.Context, statuses: tuple[str, ...], metadata: dict[str, str], limit: int, page: int
) -> None:
    """List sandboxes (JSON: the API's data, `sandboxes` and `pagination`)."""
    settings = settings_from(ctx)
    params: dict[str, Any] = {"limit": limit, "page": page}
    if statuses:
        params["status"] = ",".join(statuses)
    if metadata:
        params["metadata"] = urlencode(metadata)
    with ApiClient(settings) as api:
        data = api.request("GET", "/sandboxes", params=params)
    rows = data.get("sandboxes", []) if isinstance(data, dict) else []
    emit(data, settings, rows=rows, columns=LIST_COLUMNS, empty="no sandboxes; `scalebox sandbox create` makes one")
    pagination = data.get("pagination") if isinstance(data, dict) else None
    if not settings.json_output and isinstance(pagination, dict) and pagination.get("total", 0) > len(rows):
        click.echo(
            f"showing {len(rows)} of {pagination['total']} (page {pagination.get('page')} of "
            f"{pagination.get('total_pages')}; see --page and --limit)",
            err=True,
        )


@sandbox.command("get")
@sandbox_id_argument()
@global_options
@click.pass_context
def get_sandbox(ctx: click.Context, sandbox_id: str) -> None:
    """Show one sandbox."""
    settings = settings_from(ctx)
    with ApiClient(settings) as api:
        data = api.sandbox(sandbox_id)
    emit(data, settings, columns=DETAIL_COLUMNS)


@sandbox.command("create")
@click.option("-t", "--template", default="base", show_default=True, help="template name or ID")
@click.option("--name", help="a name to show beside the ID")
@click.option("--timeout", type=click.IntRange(1, 86_400), help="seconds until it is terminated (server default 300)")
@click.option("--cpu", "cpu_count", type=click.IntRange(1), help="CPUs")
@click.option("--memory", "memory_mb", type=click.IntRange(1), help="memory in MiB")
@click.option("--storage", "storage_gb", type=click.IntRange(0), help="disk in GiB")
@click.option("-m", "--metadata", multiple=True, callback=key_values("metadata"), metavar="KEY=VALUE",
              help="metadata to attach (repeatable)")  # fmt: skip
@click.option("-e", "--env", "env_vars", multiple=True, callback=key_values("an environment variable"),
              metavar="KEY=VALUE", help="environment variable inside (repeatable)")  # fmt: skip
@click.option("--no-internet", is_flag=True, help="no network access from inside")
@click.option("--auto-pause", is_flag=True, help="pause instead of terminating at the timeout")
@click.option("--async", "is_async", is_flag=True, help="return at once instead of waiting until it runs")
@click.option("-q", "--quiet", is_flag=True, help="print only the new sandbox's ID")
@global_options
@click.pass_context
def create_sandbox(
    ctx: click.Context,
    template: str,
    name: str | None,
    timeout: int | None,
    cpu_count: int | None,
    memory_mb: int | None,
    storage_gb: int | None,
    metadata: dict[str, str],
    env_vars: dict[str, str],
    no_internet: bool,
    auto_pause: bool,
    is_async: bool,
    quiet: bool,
) -> None:
    """Create a sandbox and wait until it runs."""
    settings = settings_from(ctx)
    body: dict[str, Any] = {"template": template, "metadata": metadata, "env_vars": env_vars}
    optional = {"name": name, "timeout": timeout, "cpu_count": cpu_count, "memory_mb": memory_mb,
                "storage_gb": storage_gb}  # fmt: skip
    body.update({k: v for k, v in optional.items() if v is not None})
    if no_internet:
        body["allow_internet_access"] = False
    if auto_pause:
        body["auto_pause"] = True
    if is_async:
        body["is_async"] = True
    with ApiClient(settings) as api, progress(f"Creating a sandbox from template {template}…"):
        data = api.request("POST", "/sandboxes", json=body, timeout=CREATE_TIMEOUT)
    if quiet:
        click.echo(data.get("sandbox_id") if isinstance(data, dict) else "")
        return
    emit(data, settings, columns=DETAIL_COLUMNS)


def _lifecycle(name: str, method: str, path: str, verb: str) -> Callable[..., None]:
    """pause / resume / delete / terminate: one request per ID."""

    def run(ctx: click.Context, ids: tuple[str, ...], body: dict[str, Any] | None = None, **params: Any) -> None:
        settings = settings_from(ctx)
        targets = unique(ids)
        with ApiClient(settings) as api:

            def act(sandbox_id: str) -> Any:
                with progress(f"{verb} {sandbox_id}…"):
                    return api.request(method, path.format(id=segment(sandbox_id)), json=body, params=params or None)

            results, failed = each(targets, act)
        emit_batch(ctx, settings, targets, results, failed)

    run.__name__ = name
    return run


_pause = _lifecycle("pause", "POST", "/sandboxes/{id}/pause", "Pausing")
_resume = _lifecycle("resume", "POST", "/sandboxes/{id}/resume", "Resuming")
_delete = _lifecycle("delete", "DELETE", "/sandboxes/{id}", "Terminating")


@sandbox.command("pause")
@sandbox_id_argument("ids", many=True)
@global_options
@click.pass_context
def pause_sandboxes(ctx: click.Context, ids: tuple[str, ...]) -> None:
    """Pause sandboxes (their processes freeze; memory is kept)."""
    _pause(ctx, ids)


@sandbox.command("resume")
@sandbox_id_argument("ids", many=True)
@click.option("--timeout", type=click.IntRange(1, 86_400), help="new timeout in seconds, from now")
@global_options
@click.pass_context
def resume_sandboxes(ctx: click.Context, ids: tuple[str, ...], timeout: int | None) -> None:
    """Resume paused sandboxes."""
    _resume(ctx, ids, {"timeout": timeout} if timeout else None)


def _delete_command(name: str, doc: str) -> click.Command:
    @click.command(name, help=doc)
    @sandbox_id_argument("ids", many=True)
    @click.option("--force", is_flag=True, help="kill at once instead of stopping gracefully")
    @global_options
    @click.pass_context
    def command(ctx: click.Context, ids: tuple[str, ...], force: bool) -> None:
        if force:
            _delete(ctx, ids, force="true")
        else:
            _delete(ctx, ids)

    return command


sandbox.add_command(_delete_command("terminate", "Terminate sandboxes: stop them and remove their containers."))
sandbox.add_command(_delete_command("delete", "Delete sandboxes (the same as terminate)."))


# -- ports, URLs, logs ----------------------------------------------------------------------


@sandbox.group("port")
def port() -> None:
    """Ports a sandbox exposes on https://<port>-<sandbox domain>/."""


@port.command("list")
@sandbox_id_argument()
@global_options
@click.pass_context
def list_ports(ctx: click.Context, sandbox_id: str) -> None:
    """List a sandbox's declared ports."""
    settings = settings_from(ctx)
    with ApiClient(settings) as api:
        data = api.request("GET", f"/sandboxes/{segment(sandbox_id)}/ports")
    rows = data.get("ports", []) if isinstance(data, dict) else []
    emit(data, settings, rows=rows, columns=PORT_COLUMNS, empty=f"{sandbox_id} declares no ports")


@port.command("add")
@sandbox_id_argument()
@click.argument("port_number", metavar="PORT", type=click.IntRange(1, 65535))
@click.option("--name", help="1-15 lowercase letters, digits or '-' (default port-PORT)")
@click.option(
    "--protocol",
    type=click.Choice(["http", "tcp", "tls"], case_sensitive=False),
    default="http",
    show_default=True,
    help="http; tcp: a byte stream, TLS ended at the gateway; tls: passed through to the sandbox",
)
@click.option("--private", is_flag=True, help="require a port token (http only)")
@click.option("--host-port", is_flag=True, help="also forward a host port to it, as plain TCP (tcp and tls only)")
@global_options
@click.pass_context
def add_port(
    ctx: click.Context,
    sandbox_id: str,
    port_number: int,
    name: str | None,
    protocol: str,
    private: bool,
    host_port: bool,
) -> None:
    """Declare a port of a sandbox."""
    settings = settings_from(ctx)
    body: dict[str, Any] = {"port": port_number, "name": name or f"port-{port_number}", "protocol": protocol.lower()}
    if private:
        body["access"] = "private"
    if host_port:
        body["host_port"] = True
    with ApiClient(settings) as api:
        data = api.request("POST", f"/sandboxes/{segment(sandbox_id)}/ports", json=body)
    emit(data, settings, rows=[data] if isinstance(data, dict) else data, columns=PORT_COLUMNS)


@port.command("remove")
@sandbox_id_argument()
@click.argument("port_numbers", metavar="PORT...", nargs=-1, required=True, type=click.IntRange(1, 65535))
@global_options
@click.pass_context
def remove_ports(ctx: click.Context, sandbox_id: str, port_numbers: tuple[int, ...]) -> None:
    """Remove declared ports from a sandbox; shows the ports left."""
    settings = settings_from(ctx)
    data: Any = None
    with ApiClient(settings) as api:
        for number in dict.fromkeys(port_numbers):
            data = api.request("DELETE", f"/sandboxes/{segment(sandbox_id)}/ports/{number}")
    rows = data.get("ports", []) if isinstance(data, dict) else []
    emit(data, settings, rows=rows, columns=PORT_COLUMNS, empty=f"{sandbox_id} declares no ports now")


@port.command("token")
@sandbox_id_argument()
@click.argument("port_number", metavar="PORT", type=click.IntRange(1, 65535))
@click.option(
    "--expires-in",
    type=click.IntRange(1, 30 * 24 * 3600),
    help="seconds the token lives (default: as long as the sandbox)",
)
@click.option("--path-prefix", help="only paths under this one, e.g. /api")
@click.option("--method", "methods", multiple=True, help="only this HTTP method (repeatable)")
@global_options
@click.pass_context
def port_token(
    ctx: click.Context,
    sandbox_id: str,
    port_number: int,
    expires_in: int | None,
    path_prefix: str | None,
    methods: tuple[str, ...],
) -> None:
    """Mint a token for a private port; prints it once, with a link for a browser."""
    settings = settings_from(ctx)
    body: dict[str, Any] = {}
    if expires_in is not None:
        body["expires_in"] = expires_in
    if path_prefix is not None:
        body["path_prefix"] = path_prefix
    if methods:
        body["methods"] = list(methods)
    with ApiClient(settings) as api:
        data = api.request("POST", f"/sandboxes/{segment(sandbox_id)}/ports/{port_number}/tokens", json=body)
    # Raw lines: the token, then the link that turns it into a cookie in a browser.
    lines = [str(data.get("token")), str(data.get("browser_url"))] if isinstance(data, dict) else data
    emit(data, settings, rows=lines)


def port_url(sandbox: Mapping[str, Any], port_number: int) -> str:
    domain = sandbox.get("sandbox_domain")
    if not domain:
        raise CliError(f"the server did not say which domain sandbox {sandbox.get('sandbox_id')} is reachable on")
    return f"https://{port_number}-{domain}/"


@sandbox.command("url")
@sandbox_id_argument()
@click.argument("port_number", metavar="PORT", type=click.IntRange(1, 65535))
@global_options
@click.pass_context
def sandbox_url(ctx: click.Context, sandbox_id: str, port_number: int) -> None:
    """Print the public URL of a port inside a sandbox."""
    settings = settings_from(ctx)
    with ApiClient(settings) as api:
        data = api.sandbox(sandbox_id)
    url = port_url(data, port_number)
    emit({"sandbox_id": data.get("sandbox_id"), "port": port_number, "url": url}, settings, rows=url)


@sandbox.command("logs")
@sandbox_id_argument()
@click.option("-n", "--tail", type=click.IntRange(1, 10_000), help="only the last N lines (server default 200)")
@output_option
@click.pass_context
def sandbox_logs(ctx: click.Context, sandbox_id: str, tail: int | None) -> None:
    """Print what a sandbox's init and start command wrote."""
    settings = settings_from(ctx)
    with ApiClient(settings) as api:
        data = api.request("GET", f"/sandboxes/{segment(sandbox_id)}/logs", params={"tail": tail} if tail else None)
    lines = data.get("lines", []) if isinstance(data, dict) else []
    emit(data, settings, rows=[str(line) for line in lines], empty=f"{sandbox_id} has written no logs yet")
