"""`scalebox sandbox exec | terminal | upload | download | ls`: working inside a running sandbox.

Importing this module adds the commands to the `sandbox` group. They go
straight to the sandbox's own domain with its access token, speaking its
agent's protocol (cli/sandboxio/); the API is the fallback when that domain
cannot be reached, or the only way with SCALEBOX_SANDBOX_ROUTE=api (see
cli/sandboxio/route.py). Failures are one line, from `describe`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import click

from cli.client import ApiClient
from cli.commands.sandbox import sandbox
from cli.context import Settings, settings_from
from cli.errors import CliError, UsageError
from cli.options import connection_options, global_options, profile_option, sandbox_id_argument
from cli.output import emit
from cli.sandboxio import execute, listing, terminal, transfer
from cli.sandboxio.command import command_from_argv, parse_envs
from cli.sandboxio.errors import SandboxIoError, describe
from cli.sandboxio.route import ROUTE_ENV, connect, route_from_env
from cli.sandboxio.transport import Backend, SandboxRef

DEFAULT_USER = "user"  # the sandbox's unprivileged user, as the SDKs default to (home /home/user)

ROUTE_HELP = f"""\b
The sandbox is reached on its own domain (https://<sandbox_domain>/) with its
access token; when that domain cannot be reached the API is used instead.
{ROUTE_ENV}=direct|api|auto (default auto) forces one way."""


def user_option(f: Any) -> Any:
    return click.option(
        "-u", "--user", default=DEFAULT_USER, show_default=True, help="the user inside the sandbox to act as"
    )(f)


@contextmanager
def reporting(remote_path: str | None = None) -> Iterator[None]:
    """SandboxIoError and local OSError as the CLI's one-line error."""
    try:
        yield
    except SandboxIoError as exc:
        raise CliError(describe(exc, path=remote_path)) from None
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        raise CliError(f"{where}{(exc.strerror or str(exc)).lower()}") from None


@contextmanager
def open_sandbox(settings: Settings, sandbox_id: str, user: str) -> Iterator[Backend]:
    """The way into `sandbox_id`: its domain and token come from the API, the route from the environment."""
    try:
        route = route_from_env(os.environ)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    with ApiClient(settings) as api:
        info = api.sandbox(sandbox_id)
        state = info.get("state") or info.get("status")
        if isinstance(state, str) and state != "running":
            # Said here, once, rather than as each way in would refuse it (a WebSocket refusal carries no reason).
            hint = f"; `scalebox sandbox resume {sandbox_id}` first" if state == "paused" else ""
            raise CliError(f"sandbox {sandbox_id} is {state}{hint}")
        domain = info.get("sandbox_domain")
        if not isinstance(domain, str) or not domain:
            raise CliError(f"the server did not say which domain sandbox {sandbox_id} is reachable on")
        ref = SandboxRef(
            sandbox_id=str(info.get("sandbox_id") or sandbox_id),
            domain=domain,
            token=str(info.get("envd_access_token") or ""),
            user=user,
            api_url=api.base_url,
            api_key=api.api_key,
            verify=api.verify,
            # The gateway serves plain HTTP and TLS on the same port: follow the server URL.
            scheme=urlsplit(api.server_url).scheme or "https",
        )
    with reporting():
        backend = connect(ref, route)
    try:
        yield backend
    finally:
        backend.close()


def _silence_stdout() -> None:
    # The reader of our stdout has gone (`| head`): point it at /dev/null so that
    # the interpreter's final flush does not print a BrokenPipeError.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


@sandbox.command(
    "exec",
    context_settings={"ignore_unknown_options": True},
    epilog=ROUTE_HELP,
)
@sandbox_id_argument()
@user_option
@click.option("--cwd", metavar="DIR", help="working directory (default: the user's home)")
@click.option("-e", "--env", "envs", multiple=True, metavar="KEY=VALUE", help="environment variable (repeatable)")
@click.argument("command", metavar="-- COMMAND...", nargs=-1, required=True, type=click.UNPROCESSED)
@profile_option
@connection_options
@click.pass_context
def exec_command(
    ctx: click.Context, sandbox_id: str, user: str, cwd: str | None, envs: tuple[str, ...], command: tuple[str, ...]
) -> None:
    """Run a command in a sandbox, streaming its output; exit with its exit code.

    \b
    One word is a shell line, run by `bash -l -c`:  exec ID -- 'ls | wc -l'
    Several words are a program and its arguments:  exec ID -- ls -la /tmp
    Ctrl-C kills the command. Local stdin is not passed on (the protocol
    cannot close a command's input): use `terminal` for interactive programs.
    """
    try:
        spec = command_from_argv(command, envs=parse_envs(envs), cwd=cwd)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    with open_sandbox(settings_from(ctx), sandbox_id, user) as backend, reporting():
        code = execute.run(backend, spec, stdout=sys.stdout.buffer, stderr=sys.stderr.buffer)
    if code == execute.BROKEN_PIPE:
        _silence_stdout()
    ctx.exit(code)


@sandbox.command("terminal", epilog=ROUTE_HELP)
@sandbox_id_argument()
@user_option
@click.option("--cwd", metavar="DIR", help="working directory (default: the user's home)")
@profile_option
@connection_options
@click.pass_context
def terminal_command(ctx: click.Context, sandbox_id: str, user: str, cwd: str | None) -> None:
    """Open an interactive shell in a sandbox; exit with the shell's exit code.

    The local terminal is put in raw mode (Ctrl-C goes to the sandbox) and
    restored when the shell ends; resizing the window resizes the remote one.
    """
    sys.stdout.flush()
    with open_sandbox(settings_from(ctx), sandbox_id, user) as backend, reporting():
        try:
            code = terminal.session(
                backend, terminal.shell_spec(cwd), stdin_fd=sys.stdin.fileno(), stdout_fd=sys.stdout.fileno()
            )
        except terminal.Hangup as exc:
            code = 128 + exc.signum
    ctx.exit(code)


@sandbox.command("upload", epilog=ROUTE_HELP)
@sandbox_id_argument()
@click.argument("local", metavar="LOCAL")
@click.argument("remote", metavar="REMOTE")
@user_option
@global_options
@click.pass_context
def upload_command(ctx: click.Context, sandbox_id: str, local: str, remote: str, user: str) -> None:
    """Copy the local file LOCAL ("-": stdin) to REMOTE in a sandbox.

    A REMOTE ending in "/" is a directory that receives the file under its own
    name; missing parent directories are created. Relative paths are in the
    user's home.
    """
    settings = settings_from(ctx)
    if local != transfer.STDIO and not os.path.isfile(local):
        what = "is not a regular file" if os.path.exists(local) else "no such file or directory"
        raise CliError(f"{local}: {what}")
    target = transfer.remote_upload_path(remote, local)
    with open_sandbox(settings, sandbox_id, user) as backend, reporting(remote):
        meter = transfer.meter_for(f"{os.path.basename(local) or local} → {target}", enabled=sys.stderr.isatty())
        sent = transfer.upload(backend, local, target, meter=meter)
    if settings.json_output:
        emit({"path": target, "bytes": sent}, settings)


@sandbox.command("download", epilog=ROUTE_HELP)
@sandbox_id_argument()
@click.argument("remote", metavar="REMOTE")
@click.argument("local", metavar="LOCAL")
@user_option
@global_options
@click.pass_context
def download_command(ctx: click.Context, sandbox_id: str, remote: str, local: str, user: str) -> None:
    """Copy the file REMOTE in a sandbox to LOCAL ("-": stdout; a directory: under its remote name).

    Relative remote paths are in the user's home.
    """
    settings = settings_from(ctx)
    destination = "-" if local == transfer.STDIO else str(transfer.local_download_path(remote, local))
    with open_sandbox(settings, sandbox_id, user) as backend, reporting(remote):
        meter = transfer.meter_for(f"{remote} → {destination}", enabled=sys.stderr.isatty())
        received = transfer.download(backend, remote, local, meter=meter, stdout=sys.stdout.buffer)
    if settings.json_output and local != transfer.STDIO:
        emit({"path": destination, "bytes": received}, settings)


@sandbox.command("ls", epilog=ROUTE_HELP)
@sandbox_id_argument()
@click.argument("path", metavar="[PATH]", default="~")
@click.option("-d", "--depth", type=click.IntRange(1, 100), default=1, show_default=True, help="levels to descend")
@user_option
@global_options
@click.pass_context
def ls_command(ctx: click.Context, sandbox_id: str, path: str, depth: int, user: str) -> None:
    """List a directory in a sandbox (default: the user's home).

    JSON output (-o json) is a list of entries: name, type, path, size, mode,
    permissions, owner, group, modified_time, symlink_target.
    """
    settings = settings_from(ctx)
    with open_sandbox(settings, sandbox_id, user) as backend, reporting(path):
        entries = backend.list_dir(path, depth)
    rows = [dict(zip(listing.HEADERS, row, strict=True)) for row in listing.rows(entries, depth=depth)]
    emit(
        [entry.to_json() for entry in entries],
        settings,
        rows=rows,
        columns=[(header, header) for header in listing.HEADERS],
        empty=f"{path} is empty",
    )
