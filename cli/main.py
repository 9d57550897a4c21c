"""The `scalebox` command: `serve` runs an appliance, everything else talks to one.

scalebox [-o table|json|json-compact] [--profile P] [--server URL] [--api-key K] [--ca-cert PEM]
    auth      login | whoami | logout | profile list|use|remove
    sandbox   list | get | create | pause | resume | terminate | delete | port ... | url | logs
              (+ exec, terminal, upload, download, ls from cli/commands/sandbox_io.py)
    template  list | get
    serve     the appliance itself (argparse, appliance/cli.py)
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import click

from cli.commands.auth import auth
from cli.commands.sandbox import sandbox
from cli.commands.serve import serve
from cli.commands.template import template
from cli.errors import CliError, from_click_usage
from cli.options import global_options

# The in-sandbox commands are built separately; they register themselves on the
# `sandbox` group when imported, and the rest of the CLI works without them.
with contextlib.suppress(ImportError):
    import cli.commands.sandbox_io  # noqa: F401

EPILOG = """\b
Settings come from the flags above, then SCALEBOX_SERVER_URL, SCALEBOX_API_KEY,
SCALEBOX_CA_CERT, SCALEBOX_OUTPUT, SCALEBOX_PROFILE, then the profile saved by
`scalebox auth login` in ~/.scalebox-cli/config.json.

\b
Shell completion (bash; zsh and fish likewise with zsh_source / fish_source):
  eval "$(_SCALEBOX_COMPLETE=bash_source scalebox)"
"""


class RootGroup(click.Group):
    """Keeps every failure to one line on stderr: click's usage reports and unexpected exceptions included."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise  # `scalebox` alone: the help text is the right answer
        except click.UsageError as exc:
            raise from_click_usage(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (CliError, click.exceptions.Exit, click.Abort, click.exceptions.NoArgsIsHelpError):
            raise
        except click.UsageError as exc:
            raise from_click_usage(exc) from None
        except click.ClickException:
            raise
        except Exception as exc:
            # A bug, not a user error: still one line, with the way to learn more.
            if os.environ.get("SCALEBOX_DEBUG"):
                raise
            raise CliError(
                f"unexpected error: {type(exc).__name__}: {exc}; run again with SCALEBOX_DEBUG=1 for a "
                "traceback, and please report it"
            ) from None


@click.group(
    "scalebox",
    cls=RootGroup,
    epilog=EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@global_options
@click.version_option(package_name="scalebox-appliance", prog_name="scalebox", message="%(prog)s %(version)s")
def main() -> None:
    """ScaleBox: run a self-hosted sandbox appliance (`serve`) and drive it from the terminal."""


main.add_command(auth)
main.add_command(sandbox)
main.add_command(template)
main.add_command(serve)
