"""The in-sandbox commands in-process, with click's runner, against a fake agent and a fake API."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from cli.client import ApiClient
from cli.commands import sandbox_io
from cli.main import main
from cli.sandboxio import route
from tests.unit.test_cli_io_fakes import KEY, FakeAgent, FakeApi, b64

SERVER = "https://api.sbx.localhost:8443"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("SCALEBOX_PROFILE", "SCALEBOX_OUTPUT", "SCALEBOX_CA_CERT", "SCALEBOX_SANDBOX_ROUTE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SCALEBOX_API_KEY", KEY)
    monkeypatch.setenv("SCALEBOX_SERVER_URL", SERVER)
    return tmp_path


@pytest.fixture
def fakes(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeAgent, FakeApi]]:
    agent, api = FakeAgent(), FakeApi()
    monkeypatch.setattr(ApiClient, "transport", api.transport())
    monkeypatch.setattr(
        sandbox_io,
        "connect",
        functools.partial(route.connect, transport=agent.transport(), api_transport=api.transport()),
    )
    yield agent, api


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def one_line_error(result: Result, code: int = 1) -> str:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("scalebox: "), result.stderr
    return lines[0].removeprefix("scalebox: ")


def test_exec_streams_and_exits_with_the_command_code(fakes: tuple[FakeAgent, FakeApi]) -> None:
    agent, _ = fakes
    agent.events = [
        {"event": {"start": {"pid": 4}}},
        {"event": {"data": {"stdout": b64(b"out\n")}}},
        {"event": {"data": {"stderr": b64(b"err\n")}}},
        {"event": {"end": {"exitCode": 7, "exited": True, "status": "exit status 7"}}},
    ]
    result = run("sandbox", "exec", "sbx-unit", "-u", "root", "--cwd", "/tmp", "-e", "A=1", "--", "echo hi")
    assert (result.exit_code, result.stdout, result.stderr) == (7, "out\n", "err\n")
    _, message = next(call for call in agent.calls if call[0].endswith("/Start"))
    assert message["process"] == {
        "cmd": "/bin/bash",
        "args": ["-l", "-c", "echo hi"],
        "envs": {"A": "1"},
        "cwd": "/tmp",
    }
    start = next(r for r in agent.requests if r.url.path.endswith("/Start"))
    assert start.headers["authorization"] == "Basic cm9vdDo="  # root:


def test_exec_without_dashes_keeps_the_command_options(fakes: tuple[FakeAgent, FakeApi]) -> None:
    agent, _ = fakes
    agent.events = [{"event": {"end": {"exitCode": 0, "exited": True}}}]
    assert run("sandbox", "exec", "sbx-unit", "ls", "-la", "/tmp").exit_code == 0
    _, message = next(call for call in agent.calls if call[0].endswith("/Start"))
    assert (message["process"]["cmd"], message["process"]["args"]) == ("ls", ["-la", "/tmp"])


def test_exec_errors_are_one_line(fakes: tuple[FakeAgent, FakeApi]) -> None:
    agent, _ = fakes
    assert "NAME=VALUE" in one_line_error(run("sandbox", "exec", "sbx-unit", "-e", "oops", "--", "true"), 2)
    agent.end_error = {"code": "invalid_argument", "message": "cwd '/nope': no such file or directory"}
    assert one_line_error(run("sandbox", "exec", "sbx-unit", "--", "true")) == "cwd '/nope': no such file or directory"
    message = one_line_error(run("sandbox", "exec", "sbx-unit", "--", "true", env={"SCALEBOX_SANDBOX_ROUTE": "x"}), 2)
    assert "SCALEBOX_SANDBOX_ROUTE must be one of" in message


def test_exec_falls_back_to_the_api_when_the_domain_is_unreachable(fakes: tuple[FakeAgent, FakeApi]) -> None:
    agent, api = fakes
    agent.unreachable = True
    api.exec_events = [("start", {"pid": 2}), ("stdout", {"data": "via api\n"}), ("end", {"exit_code": 3})]
    result = run("sandbox", "exec", "sbx-unit", "--", "echo via api")
    assert (result.exit_code, result.stdout) == (3, "via api\n")
    assert any(r.url.path == "/v1/sandboxes/sbx-unit/exec/stream" for r in api.requests)


def test_exec_direct_only_does_not_fall_back(fakes: tuple[FakeAgent, FakeApi]) -> None:
    agent, _ = fakes
    agent.unreachable = True
    result = run("sandbox", "exec", "sbx-unit", "--", "true", env={"SCALEBOX_SANDBOX_ROUTE": "direct"})
    assert one_line_error(result).startswith("cannot reach the sandbox at sbx-unit.sbx.localhost:8443")


def test_a_sandbox_that_is_not_running_is_refused_up_front(fakes: tuple[FakeAgent, FakeApi]) -> None:
    agent, api = fakes
    api.state = "paused"
    message = one_line_error(run("sandbox", "terminal", "sbx-unit"))
    assert message == "sandbox sbx-unit is paused; `scalebox sandbox resume sbx-unit` first"
    assert agent.requests == []


def test_ls_table_and_json(fakes: tuple[FakeAgent, FakeApi]) -> None:
    agent, _ = fakes
    agent.entries = [
        {"name": "b.txt", "type": "FILE_TYPE_FILE", "path": "/home/user/b.txt", "size": "3", "mode": 420,
         "permissions": "-rw-r--r--", "owner": "user", "group": "user", "modifiedTime": "2024-05-01T12:00:00Z"},
        {"name": "a", "type": "FILE_TYPE_DIRECTORY", "path": "/home/user/a", "size": "4096", "mode": 493,
         "permissions": "drwxr-xr-x", "owner": "user", "group": "user", "modifiedTime": "2024-05-01T12:00:00Z"},
    ]  # fmt: skip
    table = run("sandbox", "ls", "sbx-unit")
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["PERMISSIONS", "OWNER", "GROUP", "SIZE", "MODIFIED", "NAME"]
    assert lines[2].split()[-1] == "a/" and lines[3].split()[-1] == "b.txt"
    assert agent.calls[-1] == ("sandboxagent.Filesystem/ListDir", {"path": "~", "depth": 1})
    listed = json.loads(run("sandbox", "ls", "sbx-unit", "/home/user", "--depth", "2", "-o", "json").stdout)
    assert [e["name"] for e in listed] == ["b.txt", "a"]
    assert listed[0] == {
        "name": "b.txt", "type": "file", "path": "/home/user/b.txt", "size": 3, "mode": 420,
        "permissions": "-rw-r--r--", "owner": "user", "group": "user", "modified_time": "2024-05-01T12:00:00Z",
        "symlink_target": None,
    }  # fmt: skip
    assert one_line_error(run("sandbox", "ls", "sbx-unit", "/missing")) == "no such file or directory: /missing"


def test_upload_and_download(fakes: tuple[FakeAgent, FakeApi], tmp_path: Path) -> None:
    agent, _ = fakes
    local = tmp_path / "data.bin"
    local.write_bytes(b"\x00\x01payload" * 1000)
    assert run("sandbox", "upload", "sbx-unit", str(local), "/tmp/").exit_code == 0
    assert agent.files["/tmp/data.bin"] == local.read_bytes()
    assert agent.calls[-1] == ("upload", {"path": "/tmp/data.bin", "filename": "data.bin"})
    out = tmp_path / "out"
    out.mkdir()
    result = run("sandbox", "download", "sbx-unit", "/tmp/data.bin", str(out), "-o", "json")
    assert json.loads(result.stdout) == {"path": str(out / "data.bin"), "bytes": local.stat().st_size}
    assert (out / "data.bin").read_bytes() == local.read_bytes()
    assert run("sandbox", "download", "sbx-unit", "/tmp/data.bin", "-").stdout_bytes == local.read_bytes()


def test_file_errors(fakes: tuple[FakeAgent, FakeApi], tmp_path: Path) -> None:
    assert one_line_error(run("sandbox", "download", "sbx-unit", "/x", str(tmp_path / "x"))) == (
        "no such file or directory: /x"
    )
    assert not (tmp_path / "x").exists()
    missing = str(tmp_path / "nope")
    assert (
        one_line_error(run("sandbox", "upload", "sbx-unit", missing, "/tmp/x"))
        == f"{missing}: no such file or directory"
    )
    assert one_line_error(run("sandbox", "upload", "sbx-unit", str(tmp_path), "/tmp/x")) == (
        f"{tmp_path}: is not a regular file"
    )
    assert "no such file or directory" in one_line_error(
        run("sandbox", "download", "sbx-unit", "/x", str(tmp_path / "no" / "dir" / "x"))
    )


def test_files_through_the_api(fakes: tuple[FakeAgent, FakeApi], tmp_path: Path) -> None:
    _, api = fakes
    local = tmp_path / "f"
    local.write_bytes(b"hello")
    env = {"SCALEBOX_SANDBOX_ROUTE": "api"}
    assert run("sandbox", "upload", "sbx-unit", str(local), "/tmp/f", env=env).exit_code == 0
    assert api.files["/tmp/f"] == b"hello"
    assert run("sandbox", "download", "sbx-unit", "/tmp/f", "-", env=env).stdout_bytes == b"hello"
    assert one_line_error(run("sandbox", "download", "sbx-unit", "/x", "-", env=env)) == "no such file or directory: /x"


def test_the_commands_are_on_the_sandbox_group(home: Path) -> None:
    result = run("sandbox", "--help")
    for name in ("exec", "terminal", "upload", "download", "ls"):
        assert name in result.stdout
    assert "SCALEBOX_SANDBOX_ROUTE" in run("sandbox", "exec", "--help").stdout


def test_api_transport_is_patched(fakes: tuple[FakeAgent, FakeApi]) -> None:
    # Guard for the fixtures above: nothing here may reach a network.
    assert isinstance(ApiClient.transport, httpx.MockTransport)
