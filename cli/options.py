"""Options shared by many commands, and shell completion of sandbox IDs and profile names.

The global options (`-o`, `--profile`, `--server`, `--api-key`, `--ca-cert`) are
accepted on the root group and again on the commands that repeat them, so that
`scalebox sandbox list -o json` works like `scalebox -o json sandbox list`. Their
values go to `ctx.meta` (one dict shared by the whole context chain) rather than
to the command's parameters: the option given last, i.e. closest to the command,
wins, and command functions do not have to accept arguments they never read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

import click
from click.shell_completion import CompletionItem

from cli.context import META_PREFIX, OUTPUTS, load_config, settings_from

F = TypeVar("F", bound=Callable[..., Any])


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value is not None and param.name:
        ctx.meta[META_PREFIX + param.name] = value
    return value


def complete_profile(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    try:
        names = sorted(load_config().profiles)
    except Exception:
        # Completion must never print an error into the user's command line.
        return []
    return [CompletionItem(n) for n in names if n.startswith(incomplete)]


def complete_sandbox_id(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """IDs of the sandboxes the configured appliance knows, fetched with a short timeout."""
    from cli.client import ApiClient

    with contextlib.suppress(Exception):
        with ApiClient(settings_from(ctx), timeout=3) as api:
            data = api.request("GET", "/sandboxes", params={"limit": 1000})
        items = []
        for sandbox in data.get("sandboxes", []):
            sid = str(sandbox.get("sandbox_id", ""))
            if sid.startswith(incomplete):
                items.append(CompletionItem(sid, help=str(sandbox.get("state") or sandbox.get("status") or "")))
        return items
    return []


def output_option(f: F) -> F:
    return click.option(
        "-o",
        "--output",
        type=click.Choice(OUTPUTS),
        default=None,
        expose_value=False,
        callback=_remember,
        is_eager=True,
        help="table (default), or json / json-compact: the API's data as is (env SCALEBOX_OUTPUT)",
    )(f)


def profile_option(f: F) -> F:
    return click.option(
        "--profile",
        metavar="NAME",
        default=None,
        expose_value=False,
        callback=_remember,
        is_eager=True,
        shell_complete=complete_profile,
        help="profile from ~/.scalebox-cli/config.json (env SCALEBOX_PROFILE; default: the current one)",
    )(f)


def connection_options(f: F) -> F:
    """--server, --api-key, --ca-cert."""
    for decorator in reversed(
        [
            click.option(
                "--server",
                metavar="URL",
                default=None,
                expose_value=False,
                callback=_remember,
                is_eager=True,
                help="appliance API URL, e.g. https://api.sbx.localhost:8443 (env SCALEBOX_SERVER_URL)",
            ),
            click.option(
                "--api-key",
                metavar="KEY",
                default=None,
                expose_value=False,
                callback=_remember,
                is_eager=True,
                help="API key (env SCALEBOX_API_KEY)",
            ),
            click.option(
                "--ca-cert",
                metavar="PATH",
                default=None,
                expose_value=False,
                callback=_remember,
                is_eager=True,
                help="PEM CA to trust, e.g. /var/lib/scalebox/tls/ca.pem (env SCALEBOX_CA_CERT; "
                "default: system trust and SSL_CERT_FILE)",
            ),
        ]
    ):
        f = decorator(f)
    return f


def global_options(f: F) -> F:
    return output_option(profile_option(connection_options(f)))


def sandbox_id_argument(name: str = "sandbox_id", *, many: bool = False) -> Callable[[F], F]:
    return click.argument(
        name,
        metavar="ID..." if many else "ID",
        nargs=-1 if many else 1,
        required=True,
        shell_complete=complete_sandbox_id,
    )


def key_values(what: str) -> Callable[[click.Context, click.Parameter, tuple[str, ...]], dict[str, str]]:
    """A click callback turning repeated `KEY=VALUE` options into a dict."""

    def parse(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in values:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise click.BadParameter(f"{item!r} is not {what} KEY=VALUE", ctx=ctx, param=param)
            out[key] = value
        return out

    return parse
