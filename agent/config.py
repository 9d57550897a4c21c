"""The agent's settings, read once from SCALEBOX_* environment variables.

    SCALEBOX_AGENT_PORT  TCP port of the HTTP server (default 8888)
    SCALEBOX_START_CMD   shell command run at start with /bin/sh -c (optional)
    SCALEBOX_START_CWD   its working directory (default /)
    SCALEBOX_ACCESS_TOKEN  the token requests must carry as X-Access-Token (unset or empty: none needed)

    SCALEBOX_AGENT_VENDOR  where the vendored packages are (read by __main__; default /opt/scalebox/vendor)

Every SCALEBOX_* variable is removed from the start command's environment,
and must be from every process the agent starts (``child_environ``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

ENV_PREFIX = "SCALEBOX_"
DEFAULT_PORT = 8888


class ConfigError(ValueError):
    """An environment variable holds a value the agent cannot use."""


class Config(NamedTuple):
    port: int = DEFAULT_PORT
    start_cmd: str | None = None  # a string annotation: NamedTuple does not evaluate it
    start_cwd: str = "/"
    access_token: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Config:
        return cls(
            port=_parse_port(environ.get("SCALEBOX_AGENT_PORT", "")),
            start_cmd=environ.get("SCALEBOX_START_CMD") or None,
            start_cwd=environ.get("SCALEBOX_START_CWD") or "/",
            access_token=environ.get("SCALEBOX_ACCESS_TOKEN") or None,
        )


def child_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment for processes the agent starts: its own, less SCALEBOX_*."""
    return {k: v for k, v in environ.items() if not k.startswith(ENV_PREFIX)}


def _parse_port(text: str) -> int:
    text = text.strip()
    if not text:
        return DEFAULT_PORT
    if not (text.isascii() and text.isdigit() and len(text) <= 5 and int(text) <= 65535):
        raise ConfigError(f"SCALEBOX_AGENT_PORT must be a port number 0-65535, got {text!r}")
    return int(text)
