"""The one way the CLI fails: a single line on stderr and a non-zero exit code.

    CliError(message, exit_code=1)     what failed and what to do; `scalebox: <message>`
     +-- ApiError                      the appliance answered with an error (status, code)
     +-- UsageError (exit code 2)      a bad flag or argument, rewritten from click's own

A traceback is never what a user should see: the root group turns anything else
into a CliError too (see cli/main.py).
"""

from __future__ import annotations

from typing import IO, Any

import click

# click's convention, kept: 2 is "you called it wrong", 1 "it did not work".
EXIT_FAILURE = 1
EXIT_USAGE = 2


class CliError(click.ClickException):
    """A failure to report as one line, `scalebox: <message>`, and exit with `exit_code`."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        # Several lines would break the one-line promise (server messages may hold newlines).
        super().__init__(" ".join(message.split()))
        if exit_code is not None:
            # click declares exit_code a ClassVar, yet reads it from the instance: a per-instance
            # code (say, the exit status of a command run inside a sandbox) is set past mypy.
            object.__setattr__(self, "exit_code", exit_code)

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"scalebox: {self.format_message()}", file=file, err=file is None)


class ApiError(CliError):
    """The appliance answered with an error; `status` and `code` say which, for callers that branch on it."""

    def __init__(self, message: str, *, status: int, code: str | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        # The server's own message, before the CLI's advice was added to it.
        self.detail = detail or message

    @property
    def about_one_sandbox(self) -> bool:
        """Whether the failure concerns the one sandbox asked about, so a batch may go on with the next."""
        return self.status in (400, 404, 409)


class UsageError(CliError):
    exit_code = EXIT_USAGE


def from_click_usage(exc: click.UsageError) -> UsageError:
    """click's four-line usage report, as one line that still says where to look for help."""
    message = exc.format_message().rstrip(".")
    if message[:1].isupper() and not message[1:2].isupper():
        message = message[0].lower() + message[1:]
    if exc.ctx is not None:
        message += f"; see `{exc.ctx.command_path} --help`"
    return UsageError(message)
