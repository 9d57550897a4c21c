"""The real `scalebox sandbox exec | terminal | upload | download | ls`, as subprocesses, against an appliance.

Direct is the default: the tests check in the appliance's own logs that the
work went to the sandbox domain (gateway requests for the agent's procedures)
and not through the API. The fallback is exercised twice: forced with
SCALEBOX_SANDBOX_ROUTE=api, and found on its own when the sandbox domain cannot
be connected to (an HTTPS proxy that refuses connections, with the API host
exempted by NO_PROXY, so that only the sandbox domain is out of reach).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pexpect
import pytest

from tests.e2e.appliance import DOMAIN, SCALEBOX, Appliance, free_port
from tests.e2e.helpers import create, wait_for

pytestmark = pytest.mark.podman

# Nothing from the developer's shell may change what the CLI does.
_CLEARED = {
    "SCALEBOX_API_KEY", "SCALEBOX_SERVER_URL", "SCALEBOX_PROFILE", "SCALEBOX_OUTPUT", "SCALEBOX_CA_CERT",
    "SCALEBOX_SANDBOX_ROUTE", "SCALEBOX_DEBUG", "SSL_CERT_FILE", "SSL_CERT_DIR",
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy", "no_proxy",
}  # fmt: skip


@dataclass
class Cli:
    """The `scalebox` command, set up for one appliance and one sandbox."""

    app: Appliance
    home: Path
    sandbox_id: str

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if k not in _CLEARED}
        return {
            **base,
            "HOME": str(self.home),
            "SCALEBOX_API_KEY": self.app.api_key,
            "SCALEBOX_SERVER_URL": f"https://api.{DOMAIN}:{self.app.port}",
            "SCALEBOX_CA_CERT": str(self.app.ca),
            **(extra or {}),
        }

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 180
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [str(SCALEBOX), "sandbox", *args],
            capture_output=True,
            env=self.env(env),
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def ok(self, *args: str, env: dict[str, str] | None = None) -> bytes:
        result = self.run(*args, env=env)
        assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
        assert b"Traceback" not in result.stderr
        return result.stdout

    def exec_text(self, line: str) -> str:
        return self.ok("exec", self.sandbox_id, "--user", "root", "--", line).decode()

    def fails(self, *args: str, code: int = 1, env: dict[str, str] | None = None) -> str:
        """The one line a failure prints on stderr."""
        result = self.run(*args, env=env)
        assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
        lines = result.stderr.decode().splitlines()
        assert len(lines) == 1, result.stderr
        return lines[0]

    def spawn(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [str(SCALEBOX), "sandbox", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=self.env(env),
        )

    # -- where the work went, from the appliance's logs ----------------------------------------

    def agent_calls(self, path: str) -> int:
        """Requests the gateway passed to this sandbox's domain for `path`."""
        host = f"{self.sandbox_id}.{DOMAIN}"
        return sum(1 for e in self.app.events("gateway.request") if e.get("host") == host and e.get("path") == path)

    def api_calls(self, suffix: str) -> int:
        path = f"/v1/sandboxes/{self.sandbox_id}{suffix}"
        return sum(1 for e in self.app.events("api.request") if e.get("path") == path)


@pytest.fixture
def cli(appliance: Appliance, tmp_path: Path) -> Iterator[Cli]:
    with appliance.client() as api:
        sandbox_id = create(appliance, api, timeout=900)["sandbox_id"]
    home = tmp_path / "home"
    home.mkdir()
    yield Cli(appliance, home, sandbox_id)


def unreachable_domain_env() -> dict[str, str]:
    """The sandbox domain out of reach (connections go to a closed port), the API host still direct."""
    closed = free_port()
    proxy = f"http://127.0.0.1:{closed}"
    return {"HTTPS_PROXY": proxy, "HTTP_PROXY": proxy, "NO_PROXY": f"api.{DOMAIN}"}


# -- exec ------------------------------------------------------------------------------------------


def test_exec_exit_code_streams_and_the_direct_route(cli: Cli) -> None:
    result = cli.run("exec", cli.sandbox_id, "--", "echo out; echo err >&2; exit 3")
    assert (result.returncode, result.stdout, result.stderr) == (3, b"out\n", b"err\n")
    # Issue 7: straight to the sandbox domain, not through the API.
    assert cli.agent_calls("/sandboxagent.Process/Start") >= 1
    assert cli.api_calls("/exec/stream") == 0 and cli.api_calls("/exec") == 0

    # Program and arguments, user, cwd and environment.
    out = cli.ok("exec", cli.sandbox_id, "-u", "root", "--cwd", "/etc", "-e", "GREETING=hi there", "--",
                 "/bin/sh", "-c", 'echo "$GREETING|$(pwd)|$(id -un)|$0"', "zero")  # fmt: skip
    assert out == b"hi there|/etc|root|zero\n"
    assert cli.ok("exec", cli.sandbox_id, "--", "id -un; echo $HOME") == b"user\n/home/user\n"
    assert cli.run("exec", cli.sandbox_id, "--", "kill -9 $$").returncode == 137
    assert cli.fails("exec", cli.sandbox_id, "--cwd", "/nope", "--", "true") == (
        "scalebox: cwd '/nope': no such file or directory"
    )


def test_exec_output_is_live_on_both_streams(cli: Cli) -> None:
    script = "echo first-out; sleep 3; echo first-err >&2; sleep 3; echo done"
    started = time.monotonic()
    proc = cli.spawn("exec", cli.sandbox_id, "--", script)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline() == b"first-out\n"
    out_at = time.monotonic() - started
    assert proc.stderr.readline() == b"first-err\n"
    err_at = time.monotonic() - started
    assert proc.wait(60) == 0
    total = time.monotonic() - started
    # Each line arrives when printed, seconds before the command ends (the margins
    # leave a loaded machine 1.5-2 s of slack; buffered output would arrive at the end).
    assert out_at < total - 4, (out_at, total)
    assert err_at < total - 1.5, (err_at, total)
    assert proc.stdout.read() == b"done\n"


def _running(cli: Cli, marker: str) -> bool:
    # No ps in a minimal image: read /proc; the [b] keeps this shell's own line from matching.
    probe = f"cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' ' | grep -c '[s]leep {marker}' || true"
    return cli.exec_text(probe).strip() != "0"


def test_exec_ctrl_c_kills_the_remote_command(cli: Cli) -> None:
    proc = cli.spawn("exec", cli.sandbox_id, "--", "echo started; sleep 777; echo not-reached")
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"started\n"
    assert _running(cli, "777")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 130
    assert proc.stdout.read() == b""
    wait_for(lambda: not _running(cli, "777"), 10, "the remote sleep to be killed")


# -- files ---------------------------------------------------------------------------------------------


def test_upload_download_large_file_byte_exact(cli: Cli, tmp_path: Path) -> None:
    size = 50 * 1024 * 1024 + 123  # not a multiple of any chunk size
    local = tmp_path / "big.bin"
    with local.open("wb") as f:
        for _ in range(50):
            f.write(os.urandom(1024 * 1024))
        f.write(os.urandom(123))
    digest = hashlib.sha256(local.read_bytes()).hexdigest()

    cli.ok("upload", cli.sandbox_id, str(local), "/home/user/in/")  # "/" at the end: keep the name
    assert cli.exec_text("sha256sum /home/user/in/big.bin; stat -c %U /home/user/in/big.bin").split() == [
        digest,
        "/home/user/in/big.bin",
        "user",
    ]
    assert cli.agent_calls("/upload") == 1 and cli.api_calls("/files") == 0

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    summary = json.loads(cli.ok("download", cli.sandbox_id, "in/big.bin", str(out_dir), "-o", "json"))
    assert summary == {"path": str(out_dir / "big.bin"), "bytes": size}
    assert (out_dir / "big.bin").stat().st_size == size
    assert hashlib.sha256((out_dir / "big.bin").read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in out_dir.iterdir()) == ["big.bin"]  # no temporary file left behind

    # Through a pipe both ways.
    piped = subprocess.run(
        [str(SCALEBOX), "sandbox", "upload", cli.sandbox_id, "-", "/tmp/piped.txt"],
        input=b"through a pipe\n", capture_output=True, env=cli.env(), timeout=60,
    )  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    assert cli.ok("download", cli.sandbox_id, "/tmp/piped.txt", "-") == b"through a pipe\n"


def test_file_errors_are_one_line(cli: Cli, tmp_path: Path) -> None:
    assert cli.fails("download", cli.sandbox_id, "/x", str(tmp_path / "x")) == "scalebox: no such file or directory: /x"
    assert not (tmp_path / "x").exists()
    assert cli.fails("ls", cli.sandbox_id, "/nope") == "scalebox: no such file or directory: /nope"
    assert "permission denied" in cli.fails("download", cli.sandbox_id, "/root/.bashrc", "-")  # "user" may not
    missing = tmp_path / "missing.bin"
    assert cli.fails("upload", cli.sandbox_id, str(missing), "/tmp/x") == (
        f"scalebox: {missing}: no such file or directory"
    )


def test_ls_as_json_and_table(cli: Cli) -> None:
    cli.ok("exec", cli.sandbox_id, "--", "mkdir -p tree/sub && printf 12345 > tree/f.txt && touch tree/sub/g "
           "&& ln -s /etc tree/link")  # fmt: skip
    entries = json.loads(cli.ok("ls", cli.sandbox_id, "tree", "--depth", "2", "-o", "json"))
    by_path = {e["path"]: e for e in entries}
    assert sorted(by_path) == ["/home/user/tree/f.txt", "/home/user/tree/link", "/home/user/tree/sub",
                               "/home/user/tree/sub/g"]  # fmt: skip
    f = by_path["/home/user/tree/f.txt"]
    assert (f["name"], f["type"], f["size"], f["owner"], f["permissions"]) == ("f.txt", "file", 5, "user", "-rw-r--r--")
    assert f["modified_time"].endswith("Z")
    assert by_path["/home/user/tree/sub"]["type"] == "directory"
    assert by_path["/home/user/tree/link"]["symlink_target"] == "/etc"
    assert cli.agent_calls("/sandboxagent.Filesystem/ListDir") == 1

    table = cli.ok("ls", cli.sandbox_id, "tree").decode().splitlines()
    assert table[0].split() == ["PERMISSIONS", "OWNER", "GROUP", "SIZE", "MODIFIED", "NAME"]
    assert [line.split(None, 6)[-1] for line in table[2:]] == ["f.txt", "link -> /etc", "sub/"]


# -- terminal ---------------------------------------------------------------------------------------------


def drive_terminal(cli: Cli, env: dict[str, str] | None = None) -> None:
    child = pexpect.spawn(
        str(SCALEBOX), ["sandbox", "terminal", cli.sandbox_id], env=cli.env(env), dimensions=(30, 100), timeout=30
    )
    try:
        child.expect(r"[$#] ")
        child.sendline("echo marker-$((6*7))")
        child.expect("marker-42")
        child.sendline("stty size")
        child.expect("30 100")
        child.setwinsize(40, 120)  # SIGWINCH to the CLI, which resizes the remote PTY
        time.sleep(0.5)
        child.sendline("stty size")
        child.expect("40 120")
        child.sendcontrol("c")  # raw mode: Ctrl-C goes to the remote shell, not to the CLI
        child.sendline("echo still-$((1+1))")
        child.expect("still-2")
        child.sendline("exit 3")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 3, (child.exitstatus, child.signalstatus)


def test_terminal_through_a_pty(cli: Cli) -> None:
    drive_terminal(cli)
    assert cli.agent_calls("/sandboxagent.Process/Update") >= 1
    assert cli.agent_calls("/sandboxagent.Process/SendInput") >= 1


# -- the API path -----------------------------------------------------------------------------------------


def test_everything_through_the_api_when_forced(cli: Cli, tmp_path: Path) -> None:
    api = {"SCALEBOX_SANDBOX_ROUTE": "api"}
    before = cli.agent_calls("/sandboxagent.Process/Start")
    result = cli.run("exec", cli.sandbox_id, "--", "echo out; echo err >&2; exit 4", env=api)
    assert (result.returncode, result.stdout, result.stderr) == (4, b"out\n", b"err\n")
    assert cli.api_calls("/exec/stream") == 1

    local = tmp_path / "mid.bin"
    local.write_bytes(os.urandom(8 * 1024 * 1024 + 7))
    cli.ok("upload", cli.sandbox_id, str(local), "/tmp/mid.bin", env=api)
    cli.ok("download", cli.sandbox_id, "/tmp/mid.bin", str(tmp_path / "back.bin"), env=api)
    assert (tmp_path / "back.bin").read_bytes() == local.read_bytes()
    assert cli.api_calls("/files") == 2
    assert cli.fails("download", cli.sandbox_id, "/x", "-", env=api) == "scalebox: no such file or directory: /x"

    entries = json.loads(cli.ok("ls", cli.sandbox_id, "/tmp", "-o", "json", env=api))
    assert {"name": "mid.bin", "size": local.stat().st_size} in [
        {"name": e["name"], "size": e["size"]} for e in entries
    ]

    drive_terminal(cli, api)
    assert any(e.get("sandbox_id") == cli.sandbox_id for e in cli.app.events("api.terminal"))
    assert cli.agent_calls("/sandboxagent.Process/Start") == before  # nothing went to the sandbox domain


def test_the_api_is_found_when_the_sandbox_domain_cannot_be_reached(cli: Cli, tmp_path: Path) -> None:
    cut_off = unreachable_domain_env()
    failure = cli.fails("exec", cli.sandbox_id, "--", "true", env={**cut_off, "SCALEBOX_SANDBOX_ROUTE": "direct"})
    assert failure.startswith(f"scalebox: cannot reach the sandbox at {cli.sandbox_id}.{DOMAIN}:{cli.app.port}")

    result = cli.run("exec", cli.sandbox_id, "--", "echo fell back; exit 5", env=cut_off)
    assert (result.returncode, result.stdout, result.stderr) == (5, b"fell back\n", b"")
    assert cli.api_calls("/exec/stream") == 1

    local = tmp_path / "small.txt"
    local.write_text("small\n")
    cli.ok("upload", cli.sandbox_id, str(local), "/tmp/small.txt", env=cut_off)
    assert cli.ok("download", cli.sandbox_id, "/tmp/small.txt", "-", env=cut_off) == b"small\n"
    assert cli.api_calls("/files") == 2
