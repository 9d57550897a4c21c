"""Where the CLI's settings come from: flags, then environment, then the profile.

Profiles live in `~/.scalebox-cli/config.json` (HOME decides `~`, so tests point it
at a temporary directory):

    {"current_profile": "default",
     "profiles": {"default": {"server_url": "https://api.sbx.localhost:8443",
                              "api_key": "sk-...", "ca_cert": "/var/lib/scalebox/tls/ca.pem"}}}

The file holds API keys, so it is written 0600 inside a 0700 directory, and
replaced atomically so a crash mid-write never leaves half a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from cli.errors import CliError

OUTPUTS = ("table", "json", "json-compact")
DEFAULT_PROFILE = "default"
# What `scalebox serve` listens on by default; offered when login asks for a server.
DEFAULT_SERVER = "https://api.sbx.localhost:8443"

ENV_API_KEY = "SCALEBOX_API_KEY"
ENV_SERVER = "SCALEBOX_SERVER_URL"
ENV_PROFILE = "SCALEBOX_PROFILE"
ENV_OUTPUT = "SCALEBOX_OUTPUT"
ENV_CA_CERT = "SCALEBOX_CA_CERT"

# Where cli/options.py keeps the global options' values in ctx.meta.
META_PREFIX = "scalebox.flag."

# Profile keys, as stored.
PROFILE_KEYS = ("server_url", "api_key", "ca_cert", "output")


@dataclass(frozen=True)
class Settings:
    """Everything a command needs to reach the appliance and print its answer."""

    server_url: str | None
    api_key: str | None
    ca_cert: str | None
    output: str = "table"
    profile: str = DEFAULT_PROFILE
    # Where each value came from ("flag", "env", "profile", "default"), for `auth whoami`.
    sources: Mapping[str, str] = field(default_factory=dict)

    @property
    def json_output(self) -> bool:
        return self.output != "table"


@dataclass(frozen=True)
class Flags:
    """The global options as given on the command line; None means not given."""

    output: str | None = None
    profile: str | None = None
    server: str | None = None
    api_key: str | None = None
    ca_cert: str | None = None


# -- the config file --------------------------------------------------------------------


def config_dir() -> Path:
    return Path.home() / ".scalebox-cli"


def config_path() -> Path:
    return config_dir() / "config.json"


@dataclass
class Config:
    current_profile: str | None = None
    profiles: dict[str, dict[str, str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"current_profile": self.current_profile, "profiles": self.profiles}


def load_config(path: Path | None = None) -> Config:
    path = path or config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Config()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}; check its permissions") from None
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise CliError(f"{path} is not valid JSON ({exc}); fix it or remove it and log in again") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("profiles", {}), dict):
        raise CliError(f"{path} is not a scalebox config file; fix it or remove it and log in again")
    profiles: dict[str, dict[str, str]] = {}
    for name, values in raw.get("profiles", {}).items():
        if isinstance(name, str) and isinstance(values, dict):
            # Unknown keys are dropped, wrong types ignored: a hand edit cannot crash every command.
            profiles[name] = {k: v for k, v in values.items() if k in PROFILE_KEYS and isinstance(v, str) and v}
    current = raw.get("current_profile")
    return Config(current_profile=current if isinstance(current, str) else None, profiles=profiles)


def save_config(config: Config, path: Path | None = None) -> Path:
    path = path or config_path()
    directory = path.parent
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # mkdir's mode is filtered by umask and ignored for an existing directory.
        os.chmod(directory, 0o700)
        fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".json", dir=directory)  # created 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(config.to_json(), f, indent=2, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror}; check that {directory} is yours and writable") from None
    return path


# -- values -------------------------------------------------------------------------------


def normalise_server(url: str) -> str:
    """`api.sbx.localhost:8443`, `https://api.sbx.localhost:8443/v1/` -> `https://api.sbx.localhost:8443`."""
    text = url.strip()
    if "://" not in text:
        text = "https://" + text
    parts = urlsplit(text)
    try:
        # .port raises on a non-numeric or out-of-range port.
        _ = parts.port
    except ValueError:
        parts = parts._replace(netloc="")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise CliError(f"{url!r} is not a server URL; give one like {DEFAULT_SERVER}", exit_code=2)
    path = parts.path.rstrip("/")
    # People paste the API base they use with curl; the CLI adds /v1 itself.
    path = path.removesuffix("/v1").rstrip("/")
    return f"{parts.scheme}://{parts.netloc}{path}"


def check_output(value: str, where: str) -> str:
    if value not in OUTPUTS:
        raise CliError(f"{where} is {value!r}; use one of {', '.join(OUTPUTS)}", exit_code=2)
    return value


def absolute_ca(path: str) -> str:
    return str(Path(path).expanduser().absolute())


def resolve(flags: Flags, env: Mapping[str, str], config: Config) -> Settings:
    """flags > environment > profile > defaults. Pure: the unit tests call it directly."""

    def env_value(name: str) -> str | None:
        # An empty variable counts as unset, as `VAR= scalebox ...` is how people clear one.
        return env.get(name) or None

    sources: dict[str, str] = {}
    if flags.profile:
        profile, sources["profile"] = flags.profile, "flag"
    elif env_value(ENV_PROFILE):
        profile, sources["profile"] = env[ENV_PROFILE], "env"
    elif config.current_profile:
        profile, sources["profile"] = config.current_profile, "config"
    else:
        profile, sources["profile"] = DEFAULT_PROFILE, "default"
    stored = config.profiles.get(profile, {})

    def pick(key: str, flag: str | None, env_name: str) -> str | None:
        for source, value in (("flag", flag), ("env", env_value(env_name)), ("profile", stored.get(key))):
            if value:
                sources[key] = source
                return value
        return None

    server = pick("server_url", flags.server, ENV_SERVER)
    api_key = pick("api_key", flags.api_key, ENV_API_KEY)
    ca_cert = pick("ca_cert", flags.ca_cert, ENV_CA_CERT)
    output = pick("output", flags.output, ENV_OUTPUT)
    if output is None:
        output, sources["output"] = "table", "default"
    where = {"flag": "--output", "env": ENV_OUTPUT, "profile": f"the output of profile {profile!r}"}
    check_output(output, where.get(sources["output"], "output"))
    return Settings(
        server_url=normalise_server(server) if server else None,
        api_key=api_key.strip() if api_key else None,
        ca_cert=str(Path(ca_cert).expanduser()) if ca_cert else None,
        output=output,
        profile=profile,
        sources=sources,
    )


def flags_from(ctx: click.Context) -> Flags:
    """The global options as given to this command or any group above it.

    cli/options.py stores them in `ctx.meta` (shared along the context chain), so
    the one given closest to the command wins; a command that declares one of
    them as an ordinary parameter is honoured too.
    """
    found: dict[str, str] = {}
    for name in ("output", "profile", "server", "api_key", "ca_cert"):
        value = ctx.meta.get(META_PREFIX + name)
        current: click.Context | None = ctx
        while not value and current is not None:
            value = current.params.get(name)
            current = current.parent
        if isinstance(value, str) and value:
            found[name] = value
    return Flags(**found)


def settings_from(ctx: click.Context) -> Settings:
    return resolve(flags_from(ctx), os.environ, load_config())
