"""`scalebox auth ...`: log in to an appliance and manage the saved profiles.

A login checks the key before saving anything (GET /v1/sandboxes?limit=1), so a
profile on disk always held a key that worked when it was saved.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from cli.client import ApiClient
from cli.context import (
    DEFAULT_PROFILE,
    DEFAULT_SERVER,
    ENV_API_KEY,
    ENV_CA_CERT,
    ENV_PROFILE,
    ENV_SERVER,
    Config,
    Settings,
    absolute_ca,
    config_path,
    flags_from,
    load_config,
    normalise_server,
    save_config,
    settings_from,
)
from cli.errors import ApiError, CliError
from cli.options import complete_profile, connection_options, global_options, output_option, profile_option
from cli.output import emit

auth = click.Group("auth", help="Log in to an appliance; manage saved profiles.")


def mask(key: str) -> str:
    """Enough of a key to tell keys apart, not enough to use one."""
    return f"{key[:6]}…{key[-4:]}" if len(key) > 14 else "****"


def _profile_name(ctx: click.Context, config: Config) -> str:
    return flags_from(ctx).profile or os.environ.get(ENV_PROFILE) or config.current_profile or DEFAULT_PROFILE


def _interactive() -> bool:
    return sys.stdin.isatty()


def _read_key() -> str:
    # Piped (`cat admin-api-key | scalebox auth login ...`): one line, no terminal echo games.
    key = click.prompt("API key", hide_input=True, err=True) if _interactive() else sys.stdin.readline()
    key = str(key).strip()
    if not key:
        raise CliError(f"no API key given; pass --api-key, set {ENV_API_KEY}, or pipe the key to stdin", exit_code=2)
    return key


def sandbox_count(settings: Settings) -> int:
    """How many sandboxes the key can see: the cheapest call that proves server, CA and key all work."""
    with ApiClient(settings) as api:
        data = api.request("GET", "/sandboxes", params={"limit": 1})
    pagination = data.get("pagination") if isinstance(data, dict) else None
    return int(pagination.get("total", 0)) if isinstance(pagination, dict) else 0


@auth.command("login")
@connection_options
@profile_option
@output_option
@click.pass_context
def login(ctx: click.Context) -> None:
    """Save an API key and server URL as a profile, after checking them.

    \b
    Missing values are asked for (the key without echo), or the key is read
    from stdin when it is not a terminal:
      cat /var/lib/scalebox/admin-api-key | scalebox auth login --server https://api.sbx.localhost:8443
    """
    flags = flags_from(ctx)
    env = os.environ
    config = load_config()
    name = _profile_name(ctx, config)
    stored = config.profiles.get(name, {})

    server = flags.server or env.get(ENV_SERVER) or None
    if server is None:
        if _interactive():
            server = click.prompt("Server URL", default=stored.get("server_url") or DEFAULT_SERVER, err=True)
        elif stored.get("server_url"):
            server = stored["server_url"]
        else:
            raise CliError(f"no server URL given; pass --server URL (or set {ENV_SERVER})", exit_code=2)
    server_url = normalise_server(str(server))
    api_key = (flags.api_key or env.get(ENV_API_KEY) or "").strip() or _read_key()
    ca_cert = flags.ca_cert or env.get(ENV_CA_CERT) or stored.get("ca_cert")
    # Stored absolute: the profile is used from any directory later.
    ca_cert = absolute_ca(ca_cert) if ca_cert else None

    output = settings_from(ctx).output
    settings = Settings(server_url=server_url, api_key=api_key, ca_cert=ca_cert, output=output, profile=name)
    try:
        total = sandbox_count(settings)
    except ApiError as exc:
        if exc.status != 401:
            raise
        # The generic advice ("run scalebox auth login") is what is being done already.
        raise CliError(
            f"the server refused the API key ({exc.detail}); check the key (an appliance keeps its "
            "admin key in <data-dir>/admin-api-key) and try again"
        ) from None

    profile = {k: v for k, v in stored.items() if k == "output"}
    profile.update({"server_url": server_url, "api_key": api_key})
    if ca_cert:
        profile["ca_cert"] = ca_cert
    config.profiles[name] = profile
    config.current_profile = name
    path = save_config(config)

    result = {"profile": name, "server_url": server_url, "ca_cert": ca_cert, "sandboxes": total, "config": str(path)}
    if settings.json_output:
        emit(result, settings)
    else:
        click.echo(f"Logged in to {server_url} as profile {name!r} ({total} sandboxes there); saved in {path}")


@auth.command("whoami")
@global_options
@click.pass_context
def whoami(ctx: click.Context) -> None:
    """Show which appliance and key the commands use, and check the key still works."""
    settings = settings_from(ctx)
    total = sandbox_count(settings)
    data: dict[str, Any] = {
        "profile": settings.profile,
        "server_url": settings.server_url,
        "api_key": mask(settings.api_key or ""),
        "ca_cert": settings.ca_cert,
        "sandboxes": total,
        "sources": dict(settings.sources),
    }
    if settings.json_output:
        emit(data, settings)
        return
    src = settings.sources
    rows = {
        "Profile": f"{settings.profile} (from {src.get('profile')})",
        "Server": f"{settings.server_url} (from {src.get('server_url')})",
        "API key": f"{data['api_key']} (from {src.get('api_key')}), accepted",
        "CA cert": f"{settings.ca_cert} (from {src.get('ca_cert')})" if settings.ca_cert else "system trust",
        "Sandboxes": total,
    }
    emit(data, settings, rows=rows)


@auth.command("logout")
@profile_option
@click.pass_context
def logout(ctx: click.Context) -> None:
    """Forget the profile's API key (its server URL and CA stay for the next login)."""
    config = load_config()
    name = _profile_name(ctx, config)
    stored = config.profiles.get(name)
    if not stored or "api_key" not in stored:
        click.echo(f"profile {name!r} was not logged in", err=True)
    else:
        del stored["api_key"]
        save_config(config)
        click.echo(f"Logged out of profile {name!r}; `scalebox auth login` logs in again")
    if os.environ.get(ENV_API_KEY):
        click.echo(f"note: {ENV_API_KEY} is still set in this shell and is used when set", err=True)


# -- profiles ---------------------------------------------------------------------------------


@auth.group("profile")
def profile() -> None:
    """Saved profiles: one server, key and CA each."""


@profile.command("list")
@output_option
@click.pass_context
def list_profiles(ctx: click.Context) -> None:
    """List saved profiles; * marks the current one."""
    settings = settings_from(ctx)
    config = load_config()
    rows = [
        {
            "name": name,
            "current": name == config.current_profile,
            "server_url": values.get("server_url"),
            "ca_cert": values.get("ca_cert"),
            "logged_in": "api_key" in values,
        }
        for name, values in sorted(config.profiles.items())
    ]
    emit(
        rows,
        settings,
        columns=[
            ("", lambda r: "*" if r["current"] else " "),
            ("NAME", "name"),
            ("SERVER", "server_url"),
            ("CA CERT", "ca_cert"),
            ("LOGGED IN", "logged_in"),
        ],
        empty="no profiles; `scalebox auth login` creates one",
    )


@profile.command("use")
@click.argument("name", shell_complete=complete_profile)
def use_profile(name: str) -> None:
    """Make NAME the profile commands use by default."""
    config = load_config()
    if name not in config.profiles:
        raise CliError(f"profile {name!r} does not exist; `scalebox auth profile list` shows them, "
                       f"`scalebox auth login --profile {name}` creates it")  # fmt: skip
    config.current_profile = name
    save_config(config)
    click.echo(f"Now using profile {name!r} ({config.profiles[name].get('server_url', 'no server')})")


@profile.command("remove")
@click.argument("names", metavar="NAME...", nargs=-1, required=True, shell_complete=complete_profile)
def remove_profiles(names: tuple[str, ...]) -> None:
    """Delete saved profiles, their keys included."""
    config = load_config()
    missing = [n for n in names if n not in config.profiles]
    if missing:
        raise CliError(f"no profile named {', '.join(map(repr, missing))}; `scalebox auth profile list` shows them")
    for name in names:
        del config.profiles[name]
        if config.current_profile == name:
            config.current_profile = None
    save_config(config)
    click.echo(f"Removed {', '.join(map(repr, dict.fromkeys(names)))} from {config_path()}")
