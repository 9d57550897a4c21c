"""The agent as a process: `python3 -m agent`, the directory form, signals, start command."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.vendor import prepare_vendor_dir
from tests.unit.agent_helpers import python39

REPO = Path(__file__).resolve().parents[2]
AGENT_DIR = REPO / "agent"
READY_SECONDS = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def process_state(pid: int) -> str | None:
    """The /proc state letter of ``pid`` (``Z`` for a zombie), or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def children_of(pid: int) -> dict[int, str]:
    """Child pid -> state, for every process whose parent is ``pid``."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found[int(entry)] = fields[0]
    return found


class Agent:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, stdout: Path, stderr: Path) -> None:
        self.proc = proc
        self.port = port
        self.stdout = stdout
        self.stderr = stderr

    def events(self, *, strict: bool = False) -> list[dict[str, Any]]:
        """The agent's log lines; unless ``strict``, skip the start command's own stderr."""
        events = []
        for line in self.stderr.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                if strict:
                    raise
        return events

    def event(self, name: str, timeout: float = 5.0) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            return next((e for e in self.events() if e["event"] == name), None)

        return wait_for(find, timeout, f"event {name}")

    def request(self, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request(method, path)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"agent exited {self.proc.returncode}: {self.stderr.read_text()}")
        try:
            return self.request("GET", "/health")[0] == 204
        except OSError:
            return False

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 5.0) -> tuple[int, float]:
        """Send ``signum``; return the exit code and the seconds it took."""
        started = time.monotonic()
        self.proc.send_signal(signum)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - started


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    agents: list[Agent] = []

    def start(
        *,
        env: dict[str, str] | None = None,
        argv: list[str] | None = None,
        cwd: Path = REPO,
        wait_ready: bool = True,
    ) -> Agent:
        port = free_port()
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SCALEBOX_")}
        full_env.update({"SCALEBOX_AGENT_PORT": str(port), **(env or {})})
        stdout = tmp_path / f"agent{len(agents)}.out"
        stderr = tmp_path / f"agent{len(agents)}.err"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            proc = subprocess.Popen(
                argv or [sys.executable, "-m", "agent"],
                cwd=cwd,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        agent = Agent(proc, port, stdout, stderr)
        agents.append(agent)
        if wait_ready:
            wait_for(agent.ready, READY_SECONDS, "the agent to answer /health")
        return agent

    yield start
    for agent in agents:
        if agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait()
        events = agent.events()
        if any(e["event"] == "agent_start" and e["pid"] == 1 for e in events):
            continue  # its PID namespace died with it; its pids mean nothing here
        exited = {e["pid"] for e in events if e["event"] == "start_cmd_exited"}
        for event in events:
            if event["event"] == "start_cmd_started" and event["pid"] not in exited:
                with contextlib.suppress(OSError):
                    os.killpg(event["pid"], signal.SIGKILL)


def test_health_keep_alive_and_head(start_agent: Callable[..., Agent]) -> None:
    agent = start_agent()
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=5)
    try:
        conn.request("GET", "/health")
        first = conn.getresponse()
        assert (first.status, first.read()) == (204, b"")
        sock = conn.sock
        assert sock is not None
        conn.request("HEAD", "/health")
        second = conn.getresponse()
        assert (second.status, second.read()) == (204, b"")
        assert conn.sock is sock  # the same connection served both
    finally:
        conn.close()


def test_error_bodies(start_agent: Callable[..., Agent]) -> None:
    agent = start_agent()
    status, headers, body = agent.request("GET", "/nope")
    assert (status, headers["content-type"]) == (404, "application/json")
    assert json.loads(body)["code"] == "not_found"
    assert isinstance(json.loads(body)["message"], str)
    status, headers, body = agent.request("POST", "/health")
    assert (status, json.loads(body)["code"], headers["allow"]) == (405, "method_not_allowed", "GET, HEAD")
    with socket.create_connection(("127.0.0.1", agent.port), timeout=5) as sock:
        sock.sendall(b"BLAH\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk  # ends when the agent closes
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"Connection: close" in head
    assert json.loads(body)["code"] == "bad_request"


def test_logs_are_json_lines(start_agent: Callable[..., Agent]) -> None:
    agent = start_agent()
    assert agent.stop()[0] == 0
    events = agent.events(strict=True)
    assert all(isinstance(e["ts"], str) and e["ts"].endswith("Z") for e in events)
    names = [e["event"] for e in events]
    for expected in ["agent_start", "listening", "ready", "signal", "agent_exit"]:
        assert expected in names


def test_start_command_runs_without_scalebox_vars(start_agent: Callable[..., Agent], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    agent = start_agent(
        env={
            "SCALEBOX_START_CMD": 'env > "$OUT/env.txt"; pwd > "$OUT/pwd.txt"; echo hello-from-start',
            "SCALEBOX_START_CWD": str(out),
            "SCALEBOX_SOMETHING_ELSE": "secret",
            "OUT": str(out),
        }
    )
    exited = agent.event("start_cmd_exited")
    assert exited["exit_code"] == 0
    env_lines = (out / "env.txt").read_text().splitlines()
    assert f"OUT={out}" in env_lines
    assert not [line for line in env_lines if line.startswith("SCALEBOX_")]
    assert (out / "pwd.txt").read_text().strip() == str(out)
    assert "hello-from-start" in agent.stdout.read_text()  # stdout is inherited
    assert agent.request("GET", "/health")[0] == 204  # its exit does not stop the agent
    assert agent.stop()[0] == 0


def test_start_command_failure_is_logged_not_fatal(start_agent: Callable[..., Agent]) -> None:
    agent = start_agent(env={"SCALEBOX_START_CMD": "exit 3"})
    assert agent.event("start_cmd_exited")["exit_code"] == 3
    assert agent.request("GET", "/health")[0] == 204
    missing_cwd = start_agent(env={"SCALEBOX_START_CMD": "true", "SCALEBOX_START_CWD": "/no/such/dir"})
    assert "error" in missing_cwd.event("start_cmd_failed")
    assert missing_cwd.request("GET", "/health")[0] == 204


def test_sigterm_exits_0_even_when_the_start_command_ignores_it(
    start_agent: Callable[..., Agent], tmp_path: Path
) -> None:
    agent = start_agent(
        env={
            "SCALEBOX_START_CMD": f'trap "" TERM; sleep 60 & echo "$$ $!" > {tmp_path}/pids; wait',
        }
    )
    pids = wait_for(lambda: (tmp_path / "pids").exists() and (tmp_path / "pids").read_text().split(), what="pids")
    code, seconds = agent.stop(signal.SIGTERM)
    assert code == 0
    assert seconds < 3.0
    killed = agent.event("start_cmd_killed", timeout=0)
    assert killed["pid"] == int(pids[0])
    for pid in map(int, pids):
        wait_for(lambda pid=pid: process_state(pid) in (None, "Z"), 2.0, f"pid {pid} to die")


def test_signals_are_forwarded_to_the_start_command(start_agent: Callable[..., Agent], tmp_path: Path) -> None:
    script = (
        f'trap "echo usr1 >> {tmp_path}/got" USR1; '
        f'trap "echo hup >> {tmp_path}/got" HUP; '
        f'trap "echo term >> {tmp_path}/got; exit 0" TERM; '
        f"touch {tmp_path}/trapped; "
        "while :; do sleep 0.05; done"
    )
    agent = start_agent(env={"SCALEBOX_START_CMD": script})
    wait_for((tmp_path / "trapped").exists, what="the shell to set its traps")
    got = tmp_path / "got"
    agent.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: got.exists() and "usr1" in got.read_text(), what="SIGUSR1 to arrive")
    agent.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "hup" in got.read_text(), what="SIGHUP to arrive")
    assert agent.request("GET", "/health")[0] == 204  # neither stops the agent
    assert agent.stop(signal.SIGTERM)[0] == 0
    assert got.read_text().split() == ["usr1", "hup", "term"]
    assert "start_cmd_killed" not in [e["event"] for e in agent.events()]  # it left by itself
    assert agent.event("start_cmd_exited", timeout=0)["exit_code"] == 0


def test_sigint_without_start_command(start_agent: Callable[..., Agent]) -> None:
    agent = start_agent()
    code, seconds = agent.stop(signal.SIGINT)
    assert code == 0
    assert seconds < 1.0


def test_orphans_are_reaped(start_agent: Callable[..., Agent]) -> None:
    agent = start_agent(env={"SCALEBOX_START_CMD": "(sleep 0.1 &); (sleep 0.1 &); (sleep 0.1 &); exec sleep 60"})
    # The machines this project runs on allow it; a refusal is a finding, not a skip.
    assert agent.event("agent_start")["reaps_orphans"], "PR_SET_CHILD_SUBREAPER was refused"
    leader = agent.event("start_cmd_started")["pid"]
    wait_for(lambda: Path(f"/proc/{leader}/comm").read_text() == "sleep\n", what="the exec")
    # Zombies would stay forever: wait for the orphans to be gone, not for a moment.
    wait_for(lambda: children_of(agent.proc.pid) == {leader: "S"}, what="orphans to be reaped")


def test_bad_port_exits_2(start_agent: Callable[..., Agent]) -> None:
    agent = start_agent(env={"SCALEBOX_AGENT_PORT": "http"}, wait_ready=False)
    assert agent.proc.wait(5) == 2
    assert agent.event("config_error", timeout=0)["message"].startswith("SCALEBOX_AGENT_PORT")


def test_idle_memory_is_small(start_agent: Callable[..., Agent]) -> None:
    agent = start_agent()
    status = Path(f"/proc/{agent.proc.pid}/status").read_text()
    rss_kib = int(status.split("VmRSS:")[1].split()[0])
    assert rss_kib < 25 * 1024


def test_directory_form(start_agent: Callable[..., Agent], tmp_path: Path) -> None:
    agent = start_agent(argv=[sys.executable, str(AGENT_DIR)], cwd=tmp_path)
    assert agent.request("GET", "/nope")[0] == 404
    assert agent.stop()[0] == 0


def test_directory_form_on_python39(start_agent: Callable[..., Agent], tmp_path: Path) -> None:
    interpreter = python39()
    # That interpreter has no h11: the agent must find it where the appliance mounts it.
    vendor = prepare_vendor_dir(tmp_path / "vendor")
    agent = start_agent(
        argv=[interpreter, "-I", str(AGENT_DIR)],
        cwd=tmp_path,
        env={"SCALEBOX_START_CMD": "trap '' TERM; sleep 60", "SCALEBOX_AGENT_VENDOR": str(vendor)},
    )
    assert agent.event("agent_start")["python"].startswith("3.9.")
    assert agent.request("GET", "/nope")[0] == 404
    code, seconds = agent.stop()
    assert (code, seconds < 3.0) == (0, True)


def test_as_pid_1(start_agent: Callable[..., Agent], tmp_path: Path) -> None:
    unshare = ["unshare", "--pid", "--fork", "--mount-proc"]
    probe = subprocess.run([*unshare, "true"], capture_output=True, timeout=5)
    assert probe.returncode == 0, f"cannot make a PID namespace here: {probe.stderr!r}"
    agent = start_agent(
        argv=[*unshare, sys.executable, str(AGENT_DIR)],
        cwd=tmp_path,
        env={"SCALEBOX_START_CMD": "trap '' TERM; (sleep 0.1 &); (sleep 0.1 &); exec sleep 60"},
    )
    assert agent.event("agent_start")["pid"] == 1
    [agent_pid] = children_of(agent.proc.pid)  # unshare's child is the agent
    wait_for(lambda: list(children_of(agent_pid).values()) == ["S"], what="orphans to be reaped")
    os.kill(agent_pid, signal.SIGTERM)  # PID 1 gets only the signals it handles
    assert agent.proc.wait(5) == 0
