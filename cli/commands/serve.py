"""`scalebox serve`: the appliance itself, still parsed by argparse in appliance/cli.py.

Its options, their environment defaults and its help text live with the appliance
(appliance/config.py); forwarding the raw arguments keeps `serve` behaving exactly
as before, `--help` included, and keeps the server's imports (trio, quart, podman)
out of every client command's start-up.
"""

from __future__ import annotations

import sys

import click


@click.command(
    "serve",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    add_help_option=False,
    short_help="Run the appliance: gateway, API and sandboxes (see `scalebox serve --help`).",
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def serve(args: tuple[str, ...]) -> None:
    """Run the appliance in the foreground; `scalebox serve --help` lists its options."""
    from appliance.cli import main as appliance_main

    sys.exit(appliance_main(["serve", *args]))
