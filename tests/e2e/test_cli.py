"""The real `scalebox` command, run as a subprocess against a running appliance.

Each test gets its own HOME, so profiles are written where the test can inspect
them and no developer's ~/.scalebox-cli is read or touched.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pexpect
import pytest

from tests.e2e.appliance import SCALEBOX, Appliance, free_port
from tests.e2e.helpers import start_in_sandbox, wait_port

pytestmark = pytest.mark.podman

# Nothing from the developer's shell may change what the CLI does.
_CLEARED = ("SCALEBOX_API_KEY", "SCALEBOX_SERVER_URL", "SCALEBOX_PROFILE", "SCALEBOX_OUTPUT", "SCALEBOX_CA_CERT",
            "SSL_CERT_FILE", "SSL_CERT_DIR")  # fmt: skip


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    return {**env, "HOME": str(home), **extra}


def scalebox(home: Path, *args: str, input: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCALEBOX), *args],
        input=input if input is not None else "",
        capture_output=True,
        text=True,
        env=cli_env(home, **env),
        timeout=180,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stdout


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result))


def fails(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The one line a failure prints on stderr."""
    assert result.returncode == code, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("scalebox: ")
    return lines[0]


def server(app: Appliance) -> str:
    return app.api_url.removesuffix("/v1")


def login(app: Appliance, home: Path) -> None:
    args = ["--server", app.api_url, "--api-key", app.api_key, "--ca-cert", str(app.ca)]
    out = ok(scalebox(home, "auth", "login", *args))
    assert out.startswith(f"Logged in to {server(app)} as profile 'default'")


def test_login_flags_then_the_sandbox_lifecycle(appliance: Appliance, tmp_path: Path) -> None:
    app, home = appliance, tmp_path
    login(app, home)
    config = home / ".scalebox-cli" / "config.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o700
    saved = json.loads(config.read_text())["profiles"]["default"]
    assert saved == {"server_url": server(app), "api_key": app.api_key, "ca_cert": str(app.ca)}

    me = as_json(scalebox(home, "-o", "json", "auth", "whoami"))
    assert (me["profile"], me["server_url"], me["sandboxes"]) == ("default", server(app), 0)
    assert app.api_key not in json.dumps(me)

    # create: the JSON is the API's sandbox object
    first = as_json(scalebox(home, "sandbox", "create", "-o", "json", "-m", "owner=cli", "--timeout", "600"))
    assert first["sandbox_id"].startswith("sbx-")
    assert (first["status"], first["metadata"], first["timeout"]) == ("running", {"owner": "cli"}, 600)
    second_id = ok(scalebox(home, "sandbox", "create", "-q")).strip()
    assert second_id.startswith("sbx-") and second_id != first["sandbox_id"]

    listed = as_json(scalebox(home, "-o", "json", "sandbox", "list"))
    assert sorted(s["sandbox_id"] for s in listed["sandboxes"]) == sorted([first["sandbox_id"], second_id])
    assert listed["pagination"]["total"] == 2
    table = ok(scalebox(home, "sandbox", "list", "--metadata", "owner=cli"))
    assert first["sandbox_id"] in table and second_id not in table

    got = as_json(scalebox(home, "sandbox", "get", first["sandbox_id"], "-o", "json-compact"))
    assert got["sandbox_id"] == first["sandbox_id"] and got["sandbox_domain"] == first["sandbox_domain"]
    shown = ok(scalebox(home, "sandbox", "get", first["sandbox_id"]))
    assert shown.splitlines()[0].split() == ["ID", first["sandbox_id"]]

    # pause and resume
    paused = as_json(scalebox(home, "-o", "json", "sandbox", "pause", first["sandbox_id"]))
    assert paused["status"] == "paused"
    assert as_json(scalebox(home, "-o", "json", "sandbox", "get", first["sandbox_id"]))["state"] == "paused"
    again = fails(scalebox(home, "sandbox", "pause", first["sandbox_id"]))
    assert again == f"scalebox: sandbox {first['sandbox_id']} is already paused"
    resumed = as_json(scalebox(home, "-o", "json", "sandbox", "resume", first["sandbox_id"]))
    assert resumed["status"] == "running"

    # url: the printed URL reaches what listens on that port inside
    url = ok(scalebox(home, "sandbox", "url", first["sandbox_id"], "8080")).strip()
    assert url == f"https://8080-{first['sandbox_domain']}/"
    start_in_sandbox(first["sandbox_id"], "python3", "-m", "http.server", "8080", "--directory", "/etc")
    with app.client() as client:
        wait_port(app, client, first["sandbox_id"], 8080)
        assert "hostname" in client.get(url).text

    # ports and logs
    added = as_json(scalebox(home, "-o", "json", "sandbox", "port", "add", first["sandbox_id"], "8080", "--name=web"))
    assert (added["port"], added["name"], added["protocol"], added["url"]) == (8080, "web", "http", url)
    ports = as_json(scalebox(home, "-o", "json", "sandbox", "port", "list", first["sandbox_id"]))
    assert [p["port"] for p in ports["ports"]] == [8080]
    assert "web" in ok(scalebox(home, "sandbox", "port", "list", first["sandbox_id"]))
    left = as_json(scalebox(home, "-o", "json", "sandbox", "port", "remove", first["sandbox_id"], "8080"))
    assert left["ports"] == []
    logs = as_json(scalebox(home, "-o", "json", "sandbox", "logs", first["sandbox_id"], "--tail", "50"))
    assert isinstance(logs["lines"], list) and any('"ready"' in line for line in logs["lines"])
    assert ok(scalebox(home, "sandbox", "logs", first["sandbox_id"])).strip()

    templates = as_json(scalebox(home, "-o", "json", "template", "list"))
    assert "base" in [t["template_id"] for t in templates["templates"]]
    assert "base" in ok(scalebox(home, "template", "list"))
    assert as_json(scalebox(home, "-o", "json", "template", "get", "base"))["template_id"] == "base"

    # delete, batch: both go, then the list is empty
    deleted = as_json(scalebox(home, "-o", "json", "sandbox", "delete", first["sandbox_id"], second_id))
    assert [d["sandbox_id"] for d in deleted] == [first["sandbox_id"], second_id]
    assert as_json(scalebox(home, "-o", "json", "sandbox", "list"))["sandboxes"] == []
    assert app.containers() == []


def test_login_reads_the_key_from_stdin_or_a_prompt(appliance: Appliance, tmp_path: Path) -> None:
    app = appliance
    piped = tmp_path / "piped"
    args = ["--server", server(app), "--ca-cert", str(app.ca)]
    out = ok(scalebox(piped, "auth", "login", *args, input=app.api_key + "\n"))
    assert "Logged in" in out
    assert as_json(scalebox(piped, "-o", "json", "auth", "whoami"))["server_url"] == server(app)

    # On a terminal: both values are asked for, the key without echo.
    typed = tmp_path / "typed"
    child = pexpect.spawn(str(SCALEBOX), ["auth", "login", "--profile", "lab"], encoding="utf-8", timeout=60,
                          env=cli_env(typed, SCALEBOX_CA_CERT=str(app.ca)))  # fmt: skip
    try:
        child.expect_exact("Server URL [https://api.sbx.localhost:8443]: ")
        child.sendline(server(app))
        child.expect_exact("API key: ")
        child.sendline(app.api_key)
        child.expect(pexpect.EOF)
        assert app.api_key not in (child.before or ""), "the key must not be echoed"
        assert "Logged in" in (child.before or "")
    finally:
        child.close()
    assert child.exitstatus == 0
    profiles = as_json(scalebox(typed, "-o", "json", "auth", "profile", "list"))
    assert [(p["name"], p["current"], p["logged_in"]) for p in profiles] == [("lab", True, True)]
    assert ok(scalebox(typed, "auth", "logout")).startswith("Logged out of profile 'lab'")
    assert "no API key configured for profile 'lab'" in fails(scalebox(typed, "sandbox", "list"))


def test_bad_input_is_one_line_and_a_non_zero_exit(appliance: Appliance, tmp_path: Path) -> None:
    app, home = appliance, tmp_path
    login(app, home)

    line = fails(scalebox(home, "sandbox", "get", "sbx-doesnotexist"))
    assert line.startswith("scalebox: sandbox sbx-doesnotexist does not exist")
    line = fails(scalebox(home, "sandbox", "delete", "sbx-doesnotexist"))
    assert line.startswith("scalebox: sandbox sbx-doesnotexist does not exist")

    line = fails(scalebox(home, "--api-key", "sk-wrong", "sandbox", "list"))
    assert line.startswith("scalebox: the server refused the API key (invalid API key)")
    assert "run `scalebox auth login`" in line
    line = fails(scalebox(home, "sandbox", "list", SCALEBOX_API_KEY="sk-wrong"))
    assert line.startswith("scalebox: the server refused the API key")

    closed = free_port()
    line = fails(scalebox(home, "--server", f"https://api.sbx.localhost:{closed}", "sandbox", "list"))
    assert line.startswith(f"scalebox: cannot reach https://api.sbx.localhost:{closed}: connection refused")

    line = fails(scalebox(home, "sandbox", "list", "--bogus"), code=2)
    assert line == "scalebox: no such option '--bogus'; see `scalebox sandbox list --help`"
    line = fails(scalebox(home, "-o", "yaml", "sandbox", "list"), code=2)
    assert line.startswith("scalebox: invalid value for '-o' / '--output'")

    # Without the appliance's CA, the certificate is refused and the fix named.
    untrusted = tmp_path / "untrusted"
    line = fails(scalebox(untrusted, "--server", server(app), "--api-key", app.api_key, "sandbox", "list"))
    assert "its TLS certificate is not trusted" in line and "--ca-cert" in line
    # ... and SCALEBOX_CA_CERT is the fix.
    ok(scalebox(untrusted, "--server", server(app), "--api-key", app.api_key, "sandbox", "list",
                SCALEBOX_CA_CERT=str(app.ca)))  # fmt: skip
