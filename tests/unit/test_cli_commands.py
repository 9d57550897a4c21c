"""Whole `scalebox` commands in-process, against a fake /v1 API on httpx.MockTransport."""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from click.testing import CliRunner, Result

from cli.client import ApiClient
from cli.main import main

KEY = "sk-unit-test-key-0123456789"
SERVER = "https://api.sbx.localhost:8443"


class FakeApi:
    """Just enough of the appliance's /v1 API: sandboxes, ports, logs, templates."""

    def __init__(self) -> None:
        self.sandboxes: dict[str, dict[str, Any]] = {}
        self.requests: list[httpx.Request] = []
        self.counter = 0

    def add(self, **fields: Any) -> dict[str, Any]:
        self.counter += 1
        sid = fields.pop("sandbox_id", f"sbx-{self.counter:04d}")
        sandbox = {
            "sandbox_id": sid,
            "template_id": "base",
            "status": "running",
            "state": "running",
            "cpu_count": 1,
            "memory_mb": 512,
            "timeout": 300,
            "metadata": {},
            "custom_ports": [],
            "created_at": "2024-05-01T10:00:00Z",
            "remaining_seconds": 290,
            "sandbox_domain": f"{sid}.sbx.localhost:8443",
            **fields,
        }
        self.sandboxes[sid] = sandbox
        return sandbox

    @staticmethod
    def ok(data: Any, status: int = 200) -> httpx.Response:
        return httpx.Response(status, json={"success": True, "data": data, "message": "ok"})

    @staticmethod
    def fail(status: int, message: str, code: str) -> httpx.Response:
        return httpx.Response(status, json={"success": False, "error": code, "message": message, "code": code})

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.headers.get("x-api-key") != KEY:
            return self.fail(401, "invalid API key", "invalid_api_key")
        path, method = request.url.path, request.method
        body = json.loads(request.content) if request.content else None
        if path == "/v1/sandboxes" and method == "GET":
            items = list(self.sandboxes.values())
            limit = int(request.url.params.get("limit", 100))
            page = {"page": 1, "limit": limit, "total": len(items), "total_pages": 1, "offset": 0}
            return self.ok({"sandboxes": items[:limit], "pagination": page})
        if path == "/v1/sandboxes" and method == "POST":
            return self.ok(self.add(metadata=body.get("metadata", {}), template_id=body["template"]), 201)
        if path == "/v1/templates":
            return self.ok({"templates": [{"template_id": "base", "name": "base", "image": "localhost/b"}]})
        m = re.fullmatch(r"/v1/sandboxes/([^/]+)(/.*)?", path)
        if m is None:
            return self.fail(404, f"no such endpoint: {method} {path}", "not_found")
        sid, rest = m.group(1), m.group(2) or ""
        sandbox = self.sandboxes.get(sid)
        if sandbox is None:
            return self.fail(404, f"sandbox {sid} does not exist", "sandbox_not_found")
        match method, rest:
            case "GET", "":
                return self.ok(sandbox)
            case "DELETE", "":
                del self.sandboxes[sid]
                return self.ok({"sandbox_id": sid, "status": "terminated", "note": "container removed"}, 202)
            case "POST", "/pause":
                if sandbox["state"] == "paused":
                    return self.fail(409, f"sandbox {sid} is already paused", "already_paused")
                sandbox["state"] = sandbox["status"] = "paused"
                return self.ok(sandbox)
            case "POST", "/resume":
                sandbox["state"] = sandbox["status"] = "running"
                return self.ok(sandbox)
            case "GET", "/ports":
                return self.ok({"sandbox_id": sid, "ports": sandbox["custom_ports"]})
            case "POST", "/ports":
                domain = sandbox["sandbox_domain"]
                port = {"access": "public", **body, "address": f"{body['port']}-{domain.split(':')[0]}"}
                sandbox["custom_ports"].append(port)
                return self.ok(port, 201)
            case "POST", "/ports/3000/tokens":
                url = f"https://3000-{sandbox['sandbox_domain']}/?token=spt_x.y"
                return self.ok({"token": "spt_x.y", "browser_url": url}, 201)
            case "GET", "/logs":
                lines = ["boot", "[red]ready[/red]"][-int(request.url.params.get("tail", 200)) :]
                return self.ok({"sandbox_id": sid, "lines": lines})
        return self.fail(404, f"no such endpoint: {method} {path}", "not_found")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("SCALEBOX_API_KEY", "SCALEBOX_SERVER_URL", "SCALEBOX_PROFILE", "SCALEBOX_OUTPUT", "SCALEBOX_CA_CERT"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.fixture
def api(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeApi]:
    fake = FakeApi()
    monkeypatch.setattr(ApiClient, "transport", httpx.MockTransport(fake))
    yield fake


def run(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input, env=env, prog_name="scalebox")


def logged_in(*args: str, **kw: Any) -> Result:
    return run("--server", SERVER, "--api-key", KEY, *args, **kw)


def assert_one_line_error(result: Result, code: int = 1) -> str:
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("scalebox: "), result.stderr
    return lines[0]


# -- auth --------------------------------------------------------------------------------------------


def test_login_with_flags_saves_a_private_profile(api: FakeApi, home: Path) -> None:
    result = run("auth", "login", "--server", f"{SERVER}/v1/", "--api-key", KEY)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"Logged in to {SERVER} as profile 'default' (0 sandboxes there)")
    path = home / ".scalebox-cli" / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert json.loads(path.read_text()) == {
        "current_profile": "default",
        "profiles": {"default": {"server_url": SERVER, "api_key": KEY}},
    }
    # The key was checked with the cheapest list call.
    assert str(api.requests[-1].url) == f"{SERVER}/v1/sandboxes?limit=1"

    whoami = run("-o", "json", "auth", "whoami")
    assert whoami.exit_code == 0, whoami.stderr
    info = json.loads(whoami.stdout)
    assert info["profile"] == "default" and info["server_url"] == SERVER
    assert KEY not in whoami.stdout and info["api_key"] == "sk-uni…6789"


def test_login_reads_a_piped_key_and_keeps_profiles_apart(
    api: FakeApi, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trustme.CA().cert_pem.write_to_path(str(home / "ca.pem"))
    monkeypatch.chdir(home)
    result = run("auth", "login", "--profile", "lab", "--server", SERVER, "--ca-cert", "ca.pem", input=KEY + "\n")
    assert result.exit_code == 0, result.stderr
    config = json.loads((home / ".scalebox-cli" / "config.json").read_text())
    assert config["current_profile"] == "lab"
    assert config["profiles"]["lab"]["api_key"] == KEY
    # Stored absolute, as the profile is used from other directories.
    assert config["profiles"]["lab"]["ca_cert"] == str(home / "ca.pem")


def test_login_with_a_wrong_key_saves_nothing(api: FakeApi, home: Path) -> None:
    line = assert_one_line_error(run("auth", "login", "--server", SERVER, input="sk-wrong\n"))
    assert line.startswith("scalebox: the server refused the API key (invalid API key); check the key")
    assert not (home / ".scalebox-cli" / "config.json").exists()


def test_login_without_a_key_or_server_says_how(api: FakeApi) -> None:
    line = assert_one_line_error(run("auth", "login", "--server", SERVER, input=""), code=2)
    assert "no API key given; pass --api-key" in line
    line = assert_one_line_error(run("auth", "login", input=KEY), code=2)
    assert "no server URL given; pass --server URL" in line


def test_logout_and_profiles(api: FakeApi, home: Path) -> None:
    assert run("auth", "login", "--server", SERVER, "--api-key", KEY).exit_code == 0
    assert run("auth", "login", "--profile", "b", "--server", "https://api.b.example", "--api-key", KEY).exit_code == 0
    listed = json.loads(run("auth", "profile", "list", "-o", "json").stdout)
    assert [(p["name"], p["current"], p["logged_in"]) for p in listed] == [("b", True, True), ("default", False, True)]
    assert "api_key" not in json.dumps(listed) and KEY not in json.dumps(listed)

    assert run("auth", "profile", "use", "default").exit_code == 0
    assert run("auth", "logout").exit_code == 0
    line = assert_one_line_error(run("sandbox", "list"))
    assert "no API key configured for profile 'default'; run `scalebox auth login`" in line
    # The environment still works over a logged-out profile.
    assert run("sandbox", "list", env={"SCALEBOX_API_KEY": KEY}).exit_code == 0

    assert_one_line_error(run("auth", "profile", "use", "nope"))
    assert run("auth", "profile", "remove", "b", "default").exit_code == 0
    assert json.loads(run("auth", "profile", "list", "-o", "json").stdout) == []


# -- sandboxes ------------------------------------------------------------------------------------------


def test_create_prints_the_apis_data(api: FakeApi) -> None:
    result = logged_in("-o", "json", "sandbox", "create", "-m", "owner=me", "-e", "A=1", "--timeout", "60")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data == api.sandboxes[data["sandbox_id"]]
    sent = json.loads(api.requests[-1].content)
    assert sent == {"template": "base", "metadata": {"owner": "me"}, "env_vars": {"A": "1"}, "timeout": 60}

    quiet = logged_in("sandbox", "create", "-q")
    assert quiet.stdout.strip() in api.sandboxes


def test_list_table_and_json(api: FakeApi) -> None:
    api.add(metadata={"owner": "me"})
    api.add(state="paused", status="paused")
    table = logged_in("sandbox", "list")
    assert table.exit_code == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["ID", "STATE", "TEMPLATE", "CPU", "MEMORY", "CREATED", "EXPIRES", "METADATA"]
    assert lines[2].split()[:2] == ["sbx-0001", "running"] and lines[2].endswith("owner=me")
    assert lines[3].split()[:2] == ["sbx-0002", "paused"]
    # The leaf's -o beats the root's, and json is the data exactly.
    data = json.loads(logged_in("-o", "table", "sandbox", "list", "-o", "json-compact").stdout)
    assert data["sandboxes"] == list(api.sandboxes.values())
    assert data["pagination"]["total"] == 2
    assert json.loads(logged_in("sandbox", "list", env={"SCALEBOX_OUTPUT": "json"}).stdout) == data


def test_get_shows_fields(api: FakeApi) -> None:
    api.add(metadata={"a": "b"})
    result = logged_in("sandbox", "get", "sbx-0001")
    assert result.exit_code == 0
    assert re.search(r"^State\s+running$", result.stdout, re.M)
    assert re.search(r"^Metadata\s+a=b$", result.stdout, re.M)


def test_unknown_sandbox_is_one_line(api: FakeApi) -> None:
    line = assert_one_line_error(logged_in("sandbox", "get", "sbx-x"))
    assert line.startswith("scalebox: sandbox sbx-x does not exist")


def test_batch_pause_goes_on_past_failures_and_exits_non_zero(api: FakeApi) -> None:
    api.add()
    api.add(state="paused")
    result = logged_in("-o", "json", "sandbox", "pause", "sbx-0001", "sbx-0002", "sbx-nope", "sbx-0001")
    assert result.exit_code == 1
    assert [d["sandbox_id"] for d in json.loads(result.stdout)] == ["sbx-0001"]
    assert result.stderr.splitlines() == [
        "scalebox: sandbox sbx-0002 is already paused",
        "scalebox: sandbox sbx-nope does not exist; `scalebox sandbox list` shows the sandboxes there are",
    ]


def test_delete_and_terminate_take_several_ids(api: FakeApi) -> None:
    for _ in range(3):
        api.add()
    result = logged_in("sandbox", "delete", "sbx-0001", "sbx-0002", "--force")
    assert result.exit_code == 0, result.stderr
    assert [line.split()[:2] for line in result.stdout.splitlines()[2:]] == [
        ["sbx-0001", "terminated"],
        ["sbx-0002", "terminated"],
    ]
    assert api.requests[-1].url.params["force"] == "true"
    single = logged_in("-o", "json", "sandbox", "terminate", "sbx-0003")
    assert json.loads(single.stdout) == {"sandbox_id": "sbx-0003", "status": "terminated", "note": "container removed"}
    assert api.sandboxes == {}


def test_url_ports_and_logs(api: FakeApi) -> None:
    api.add(sandbox_id="sbx-abc")
    url = logged_in("sandbox", "url", "sbx-abc", "8080")
    assert url.stdout == "https://8080-sbx-abc.sbx.localhost:8443/\n"

    added = logged_in("-o", "json", "sandbox", "port", "add", "sbx-abc", "8080")
    assert json.loads(added.stdout)["name"] == "port-8080"
    assert json.loads(api.requests[-1].content) == {"port": 8080, "name": "port-8080", "protocol": "http"}
    logged_in("sandbox", "port", "add", "sbx-abc", "5432", "--protocol", "TCP", "--host-port", "--name", "db")
    assert json.loads(api.requests[-1].content) == {"port": 5432, "name": "db", "protocol": "tcp", "host_port": True}
    logged_in("sandbox", "port", "add", "sbx-abc", "3000", "--private")
    assert json.loads(api.requests[-1].content)["access"] == "private"
    listed = logged_in("sandbox", "port", "list", "sbx-abc")
    assert listed.stdout.splitlines()[2].split() == [
        "8080",
        "port-8080",
        "http",
        "public",
        "8080-sbx-abc.sbx.localhost",
        "-",
    ]

    minted = logged_in("sandbox", "port", "token", "sbx-abc", "3000", "--expires-in", "60", "--method", "GET")
    assert json.loads(api.requests[-1].content) == {"expires_in": 60, "methods": ["GET"]}
    assert minted.stdout.splitlines() == ["spt_x.y", "https://3000-sbx-abc.sbx.localhost:8443/?token=spt_x.y"]

    logs = logged_in("sandbox", "logs", "sbx-abc", "--tail", "1")
    assert logs.stdout == "[red]ready[/red]\n"
    assert api.requests[-1].url.params["tail"] == "1"


def test_template_list(api: FakeApi) -> None:
    result = logged_in("template", "list")
    assert result.stdout.splitlines()[2].split()[:3] == ["base", "base", "localhost/b"]


# -- bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["sandbox", "list", "--bogus"], "scalebox: no such option '--bogus'; see `scalebox sandbox list --help`"),
        (["sandbox", "get"], "scalebox: missing argument 'ID'; see `scalebox sandbox get --help`"),
        (["-o", "xml", "sandbox", "list"], "scalebox: invalid value for '-o' / '--output'"),
        (["sandbox", "create", "-m", "novalue"], "scalebox: invalid value for '-m' / '--metadata': 'novalue' is not"),
        (["sandbox", "url", "sbx-1", "70000"], "scalebox: invalid value for 'PORT'"),
        (["sandbox", "frobnicate"], "scalebox: no such command 'frobnicate'"),
    ],
)
def test_usage_errors_are_one_line(api: FakeApi, args: list[str], expected: str) -> None:
    assert assert_one_line_error(logged_in(*args), code=2).startswith(expected)


def test_a_bug_is_one_line_too(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("cli.commands.sandbox.emit", boom)
    line = assert_one_line_error(logged_in("sandbox", "list"))
    assert line == (
        "scalebox: unexpected error: RuntimeError: boom; run again with SCALEBOX_DEBUG=1 for a traceback, "
        "and please report it"
    )


def test_no_arguments_shows_help(api: FakeApi) -> None:
    result = run()
    assert "Commands:" in result.stderr + result.stdout
    assert "_SCALEBOX_COMPLETE=bash_source scalebox" in run("--help").stdout


def test_serve_forwards_its_arguments_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        seen.append(argv)
        return 7

    monkeypatch.setattr("appliance.cli.main", fake_main)
    result = run("serve", "--listen", "127.0.0.1:9", "--help", "--domain=x.test")
    assert result.exit_code == 7
    assert seen == [["serve", "--listen", "127.0.0.1:9", "--help", "--domain=x.test"]]
