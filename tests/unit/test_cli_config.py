"""CLI settings: flags > environment > profile, the config file and its permissions."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from cli.context import (
    Config,
    Flags,
    config_path,
    load_config,
    normalise_server,
    resolve,
    save_config,
)
from cli.errors import CliError

PROFILES = Config(
    current_profile="work",
    profiles={
        "work": {"server_url": "https://api.work.example:8443", "api_key": "sk-work", "ca_cert": "/etc/work-ca.pem"},
        "home": {"server_url": "https://api.sbx.localhost:8443", "api_key": "sk-home", "output": "json"},
    },
)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- resolution ------------------------------------------------------------------------------


def test_the_current_profile_supplies_everything_by_default() -> None:
    s = resolve(Flags(), {}, PROFILES)
    assert (s.profile, s.server_url, s.api_key, s.ca_cert, s.output) == (
        "work",
        "https://api.work.example:8443",
        "sk-work",
        "/etc/work-ca.pem",
        "table",
    )
    assert s.sources == {
        "profile": "config",
        "server_url": "profile",
        "api_key": "profile",
        "ca_cert": "profile",
        "output": "default",
    }


def test_environment_beats_the_profile_and_flags_beat_the_environment() -> None:
    env = {
        "SCALEBOX_API_KEY": "sk-env",
        "SCALEBOX_SERVER_URL": "https://api.env.example",
        "SCALEBOX_OUTPUT": "json-compact",
        "SCALEBOX_CA_CERT": "/env/ca.pem",
    }
    s = resolve(Flags(), env, PROFILES)
    assert (s.server_url, s.api_key, s.ca_cert, s.output) == (
        "https://api.env.example",
        "sk-env",
        "/env/ca.pem",
        "json-compact",
    )
    flags = Flags(output="table", server="https://api.flag.example", api_key="sk-flag", ca_cert="/flag/ca.pem")
    s = resolve(flags, env, PROFILES)
    assert (s.server_url, s.api_key, s.ca_cert, s.output) == (
        "https://api.flag.example",
        "sk-flag",
        "/flag/ca.pem",
        "table",
    )
    assert set(s.sources.values()) == {"flag", "config"}


def test_profile_chosen_by_flag_then_environment_then_config() -> None:
    assert resolve(Flags(), {"SCALEBOX_PROFILE": "home"}, PROFILES).api_key == "sk-home"
    assert resolve(Flags(profile="work"), {"SCALEBOX_PROFILE": "home"}, PROFILES).api_key == "sk-work"
    # A profile may keep its own output format.
    assert resolve(Flags(profile="home"), {}, PROFILES).output == "json"


def test_empty_environment_variables_count_as_unset() -> None:
    s = resolve(Flags(), {"SCALEBOX_API_KEY": "", "SCALEBOX_PROFILE": ""}, PROFILES)
    assert (s.profile, s.api_key) == ("work", "sk-work")


def test_nothing_configured_leaves_values_empty_for_the_client_to_explain() -> None:
    s = resolve(Flags(), {}, Config())
    assert (s.profile, s.server_url, s.api_key, s.ca_cert, s.output) == ("default", None, None, None, "table")


def test_unknown_output_format_from_the_environment_is_refused_by_name() -> None:
    with pytest.raises(CliError, match="SCALEBOX_OUTPUT is 'xml'; use one of table, json, json-compact"):
        resolve(Flags(), {"SCALEBOX_OUTPUT": "xml"}, Config())


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("https://api.sbx.localhost:8443", "https://api.sbx.localhost:8443"),
        ("https://api.sbx.localhost:8443/", "https://api.sbx.localhost:8443"),
        ("https://api.sbx.localhost:8443/v1", "https://api.sbx.localhost:8443"),
        ("https://api.sbx.localhost:8443/v1/", "https://api.sbx.localhost:8443"),
        ("api.sbx.localhost:8443", "https://api.sbx.localhost:8443"),
        ("  http://10.0.0.5:8080/scalebox/v1 ", "http://10.0.0.5:8080/scalebox"),
    ],
)
def test_server_urls_are_normalised(given: str, expected: str) -> None:
    assert normalise_server(given) == expected


@pytest.mark.parametrize("bad", ["ftp://x", "https://", "https://host:99999", "https://host/?q=1"])
def test_bad_server_urls_are_refused(bad: str) -> None:
    with pytest.raises(CliError, match="is not a server URL"):
        normalise_server(bad)


# -- the file ----------------------------------------------------------------------------------


def test_config_lives_under_home(home: Path) -> None:
    assert config_path() == home / ".scalebox-cli" / "config.json"


def test_saved_config_is_private_and_round_trips(home: Path) -> None:
    path = save_config(PROFILES)
    assert path == home / ".scalebox-cli" / "config.json"
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert load_config() == PROFILES
    assert not [p for p in path.parent.iterdir() if p.name != "config.json"], "no temporary file is left behind"


def test_saving_tightens_an_existing_directory_and_file(home: Path) -> None:
    directory = home / ".scalebox-cli"
    directory.mkdir(mode=0o755)
    (directory / "config.json").write_text("{}")
    (directory / "config.json").chmod(0o644)
    path = save_config(PROFILES)
    assert mode(directory) == 0o700
    assert mode(path) == 0o600


def test_a_missing_file_is_an_empty_config(home: Path) -> None:
    assert load_config() == Config()


def test_a_corrupt_file_is_named_with_what_to_do(home: Path) -> None:
    path = home / ".scalebox-cli" / "config.json"
    path.parent.mkdir()
    path.write_text("{not json")
    with pytest.raises(CliError, match=r"config\.json is not valid JSON .*fix it or remove it"):
        load_config()


def test_hand_edits_with_wrong_types_are_ignored_not_fatal(home: Path) -> None:
    path = home / ".scalebox-cli" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"current_profile": 3, "profiles": {"a": {"api_key": 5, "server_url": "x", "z": "y"}}}))
    assert load_config() == Config(current_profile=None, profiles={"a": {"server_url": "x"}})
