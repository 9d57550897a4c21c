"""The bash and Node.js kernels of the code interpreter, started directly and spoken to over the kernel protocol.

Each test starts its kernel as the agent does (new session, stdin /dev/null,
stdout/stderr pipes, the protocol pipes' fds in SCALEBOX_KERNEL_IN/OUT) and
checks what agent/interpreter/__init__.py promises: ready, output, state kept
across executions, env for one execution, errors, interrupts.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

KERNELS = Path(__file__).resolve().parents[2] / "agent" / "interpreter" / "kernels"
TIMEOUT = 10.0  # for any one wait: a broken kernel fails the test instead of hanging it

KEYBOARD_INTERRUPT = {"event": "error", "name": "KeyboardInterrupt", "value": "interrupted", "traceback": ""}
DONE = {"event": "done"}


@dataclass
class Execution:
    events: list[dict[str, Any]]
    stdout: str
    stderr: str

    @property
    def error(self) -> dict[str, Any] | None:
        errors = [event for event in self.events if event["event"] == "error"]
        assert len(errors) <= 1, self.events
        return errors[0] if errors else None

    @property
    def results(self) -> list[dict[str, Any]]:
        return [event for event in self.events if event["event"] == "result"]


@dataclass
class Kernel:
    process: subprocess.Popen[bytes]
    requests: int  # our end of the kernel's SCALEBOX_KERNEL_IN pipe
    events: int  # our end of its SCALEBOX_KERNEL_OUT pipe
    buffer: bytes = b""
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    closed: bool = False

    @classmethod
    def start(cls, argv: list[str], cwd: Path) -> Kernel:
        kernel_in, requests = os.pipe()
        events, kernel_out = os.pipe()
        # TMPDIR: whatever a kernel leaves behind (bash's private directory, when killed) is pytest's to remove.
        env = dict(os.environ, SCALEBOX_KERNEL_IN=str(kernel_in), SCALEBOX_KERNEL_OUT=str(kernel_out), TMPDIR=str(cwd))
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(kernel_in, kernel_out),
            start_new_session=True,
        )
        os.close(kernel_in)
        os.close(kernel_out)
        kernel = cls(process, requests, events)
        assert kernel.next_event() == {"event": "ready"}
        return kernel

    def _read_some(self, timeout: float) -> None:
        """Read whatever the kernel wrote to any of its three pipes within ``timeout``."""
        assert self.process.stdout is not None and self.process.stderr is not None
        sources: dict[int, bytearray | None] = {
            self.events: None,
            self.process.stdout.fileno(): self.stdout,
            self.process.stderr.fileno(): self.stderr,
        }
        ready, _, _ = select.select(list(sources), [], [], timeout)
        for fd in ready:
            data = os.read(fd, 65536)
            sink = sources[fd]
            if sink is not None:
                sink += data
            elif data:
                self.buffer += data
            else:
                raise AssertionError(f"the kernel closed its events pipe; stderr: {self.stderr.decode()!r}")

    def next_event(self) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            assert left > 0, f"no event within {TIMEOUT} s; stderr: {self.stderr.decode()!r}"
            self._read_some(left)
        line, self.buffer = self.buffer.split(b"\n", 1)
        event: dict[str, Any] = json.loads(line)
        return event

    def send(self, code: str, env: dict[str, str] | None = None) -> None:
        self.stdout.clear()
        self.stderr.clear()
        self.send_line(json.dumps({"code": code, "env": env or {}}))

    def send_line(self, line: str) -> None:
        os.write(self.requests, line.encode() + b"\n")

    def wait_stdout(self, text: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while text.encode() not in self.stdout:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} not printed within {TIMEOUT} s; stdout: {self.stdout.decode()!r}"
            self._read_some(left)

    def finish(self) -> Execution:
        """The events up to ``done``, and the output written before it."""
        events: list[dict[str, Any]] = []
        while not events or events[-1] != DONE:
            events.append(self.next_event())
        # Written before "done", so already in the pipes.
        assert self.process.stdout is not None and self.process.stderr is not None
        while select.select([self.process.stdout.fileno(), self.process.stderr.fileno()], [], [], 0)[0]:
            before = len(self.stdout) + len(self.stderr)
            self._read_some(0)
            if len(self.stdout) + len(self.stderr) == before:
                break
        return Execution(events, self.stdout.decode(), self.stderr.decode())

    def run(self, code: str, env: dict[str, str] | None = None) -> Execution:
        self.send(code, env)
        return self.finish()

    def interrupt(self) -> None:
        os.killpg(self.process.pid, signal.SIGINT)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        # End of the requests: a kernel exits (and cleans up); one that does not is killed, and so
        # is anything left in its process group. Not reaped before the kill (WNOWAIT), the kernel
        # keeps its pid, so the group's id cannot name another group yet.
        os.close(self.requests)
        if self.process.returncode is None:  # else reaped already: its group's id is not ours
            deadline = time.monotonic() + 2
            while os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(TIMEOUT)
        os.close(self.events)
        assert self.process.stdout is not None and self.process.stderr is not None
        self.process.stdout.close()
        self.process.stderr.close()


@pytest.fixture
def bash(tmp_path: Path) -> Iterator[Kernel]:
    kernel = Kernel.start(["bash", "--noprofile", "--norc", str(KERNELS / "bash_kernel.sh")], tmp_path)
    yield kernel
    kernel.close()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Kernel]:
    executable = shutil.which("node")
    assert executable is not None, "Node.js (the nodejs package) is needed for the JavaScript kernel"
    kernel = Kernel.start([executable, str(KERNELS / "node_kernel.js")], tmp_path)
    yield kernel
    kernel.close()


def result_text(execution: Execution) -> str | None:
    assert execution.error is None, execution.error
    assert all(result["main"] for result in execution.results)
    assert len(execution.results) <= 1, execution.results
    return str(execution.results[0]["data"]["text/plain"]) if execution.results else None


# -- bash -------------------------------------------------------------------


def test_bash_output_and_done(bash: Kernel) -> None:
    execution = bash.run("echo out; echo err >&2; printf 'é ☃\\n'")
    assert execution.events == [DONE]
    assert execution.stdout == "out\né ☃\n"
    assert execution.stderr == "err\n"


def test_bash_state_persists(bash: Kernel, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    setup = "x=5; declare -A map=([k]=v); f() { echo \"f$1\"; }; cd sub; export EXPORTED=e; alias hello='echo hi'"
    assert bash.run(setup).events == [DONE]
    execution = bash.run('echo "$x ${map[k]} $(f 2) $PWD"; bash -c \'echo "$EXPORTED"\'; hello')
    assert execution.events == [DONE]
    assert execution.stdout == f"5 v f2 {tmp_path / 'sub'}\ne\nhi\n"


def test_bash_env_is_for_one_execution(bash: Kernel) -> None:
    bash.run("export OLD=keep; PLAIN=p")
    show = 'echo "$OLD $PLAIN ${NEW-unset}"; env | grep -E "^(OLD|PLAIN|NEW)=" | sort'
    execution = bash.run(show, env={"OLD": "new", "PLAIN": "q", "NEW": "n", "not a name": "x"})
    assert execution.events == [DONE]
    assert execution.stdout == "new q n\nNEW=n\nOLD=new\nPLAIN=q\n"
    # Back as they were: PLAIN set but not exported again, NEW unset.
    assert bash.run(show).stdout == "keep p unset\nOLD=keep\n"


def test_bash_non_zero_status_is_an_error(bash: Kernel) -> None:
    assert bash.run("false").events == [
        {"event": "error", "name": "Error", "value": "exit status 1", "traceback": ""},
        DONE,
    ]
    assert bash.run("echo a; (exit 3)").error == {
        "event": "error",
        "name": "Error",
        "value": "exit status 3",
        "traceback": "",
    }
    execution = bash.run("no_such_command_here; true")
    assert execution.events == [DONE]
    assert "no_such_command_here: command not found" in execution.stderr


def test_bash_interrupt_stops_a_busy_loop_and_keeps_state(bash: Kernel) -> None:
    bash.send("x=1; echo go; while :; do :; done")
    bash.wait_stdout("go")
    bash.interrupt()
    assert bash.finish().events == [KEYBOARD_INTERRUPT, DONE]
    assert bash.run('echo "$x"').stdout == "1\n"


def test_bash_interrupt_stops_a_sleep_in_a_function(bash: Kernel) -> None:
    started = time.monotonic()
    bash.send("f() { sleep 100; echo not-after-sleep; }; echo go; f; echo not-after-f")
    bash.wait_stdout("go")
    bash.interrupt()
    execution = bash.finish()
    assert execution.events == [KEYBOARD_INTERRUPT, DONE]
    assert "not-after" not in execution.stdout
    assert time.monotonic() - started < TIMEOUT
    assert bash.run("f() { echo still; }; f").stdout == "still\n"


def test_bash_sigint_while_idle_is_ignored(bash: Kernel) -> None:
    bash.interrupt()
    time.sleep(0.1)
    assert bash.process.poll() is None
    assert bash.run("echo alive").events == [DONE]
    assert bash.stdout == b"alive\n"


def test_bash_code_sees_no_protocol_fds_or_variables(bash: Kernel) -> None:
    execution = bash.run('env | grep -c SCALEBOX_KERNEL; echo "${SCALEBOX_KERNEL_IN-unset}"; ls /proc/self/fd')
    count, unset, *fds = execution.stdout.split()
    assert (count, unset) == ("0", "unset")
    # ls's own directory fd besides 0-2; stdin is /dev/null.
    assert set(fds) <= {"0", "1", "2", "3"}
    assert bash.run("cat; read -r line; echo $?").stdout == "1\n"


def test_bash_xtrace_shows_the_code_not_the_kernel(bash: Kernel) -> None:
    bash.run("set -x")
    execution = bash.run("y=1")
    assert execution.events == [DONE]
    assert execution.stderr == "++ y=1\n"
    assert bash.run("set +x; echo $y").stdout == "1\n"


def test_bash_break_at_top_level_finishes_the_execution(bash: Kernel) -> None:
    assert bash.run("echo a; break; echo b").stdout == "a\n"
    assert bash.run("continue; echo b").events == [DONE]
    assert bash.run("echo c").stdout == "c\n"


def test_bash_bad_request(bash: Kernel) -> None:
    bash.send_line("not json")
    execution = bash.finish()
    assert execution.error is not None
    assert execution.error["name"] == "Error"
    assert execution.error["value"].startswith("bad request")
    assert bash.run("echo ok").stdout == "ok\n"


def test_bash_end_of_requests_ends_the_kernel_and_its_directory(bash: Kernel, tmp_path: Path) -> None:
    assert [path.name.split(".")[1] for path in tmp_path.glob("bash-kernel.*")] == [str(bash.process.pid)]
    bash.close()
    assert bash.process.returncode == 0
    assert list(tmp_path.glob("bash-kernel.*")) == []


def test_bash_removes_directories_of_kernels_that_are_gone(tmp_path: Path) -> None:
    gone = tmp_path / "bash-kernel.999999999.aaaaaa"  # above any pid_max
    alive = tmp_path / f"bash-kernel.{os.getpid()}.bbbbbb"
    for directory in (gone, alive):
        directory.mkdir()
        (directory / "cell").write_text("true\n")
    kernel = Kernel.start(["bash", str(KERNELS / "bash_kernel.sh")], tmp_path)
    try:
        assert not gone.exists()
        assert alive.exists()
    finally:
        kernel.close()


def test_bash_exit_ends_the_kernel(bash: Kernel) -> None:
    bash.send("exit 3")
    assert bash.process.wait(TIMEOUT) == 3


# -- Node.js -----------------------------------------------------------------


def test_node_output_and_result(node: Kernel) -> None:
    execution = node.run('console.log("out"); console.error("err"); process.stdout.write("w\\n"); 1 + 2')
    assert execution.events == [{"event": "result", "data": {"text/plain": "3"}, "main": True}, DONE]
    assert execution.stdout == "out\nw\n"
    assert execution.stderr == "err\n"
    assert node.run("'s'").events[0]["data"] == {"text/plain": "'s'"}
    assert node.run("{a: 1}").events[0]["data"] == {"text/plain": "{ a: 1 }"}
    assert node.run("undefined").events == [DONE]


def test_node_state_persists(node: Kernel, tmp_path: Path) -> None:
    setup = "let a = 1; const b = 2; var v = 4; function f() { return a + b } class C {} process.chdir('/')"
    assert node.run(setup).events == [DONE]
    execution = node.run("[a, b, v, f(), typeof C, process.cwd()]")
    assert result_text(execution) == "[ 1, 2, 4, 3, 'function', '/' ]"
    redeclared = node.run("let a = 2").error
    assert redeclared is not None and redeclared["name"] == "SyntaxError"


def test_node_require_and_builtin_globals(node: Kernel, tmp_path: Path) -> None:
    (tmp_path / "local.js").write_text("module.exports = 42;\n")
    assert result_text(node.run("[require('./local.js'), require('path').join('a', 'b'), path.sep, typeof fs]")) == (
        "[ 42, 'a/b', '/', 'object' ]"
    )


def test_node_env_is_for_one_execution(node: Kernel) -> None:
    node.run("process.env.KEEP = 'k'")
    show = "[process.env.KEEP, process.env.NEW, require('child_process').execSync('echo $NEW').toString()]"
    assert result_text(node.run(show, env={"KEEP": "n", "NEW": "x"})) == "[ 'n', 'x', 'x\\n' ]"
    assert result_text(node.run(show)) == "[ 'k', undefined, '\\n' ]"


def test_node_errors(node: Kernel) -> None:
    thrown = node.run('function g() { throw new TypeError("bad") }\ng()').error
    assert thrown is not None
    assert (thrown["name"], thrown["value"]) == ("TypeError", "bad")
    assert "TypeError: bad" in thrown["traceback"] and "at g (<cell-" in thrown["traceback"]
    assert "node_kernel.js" not in thrown["traceback"] and "node:vm" not in thrown["traceback"]
    syntax = node.run("foo bar").error
    assert syntax is not None and syntax["name"] == "SyntaxError"
    assert node.run("throw 5").error == {"event": "error", "name": "Error", "value": "5", "traceback": "Uncaught 5"}
    rejected = node.run("await Promise.reject(new RangeError('r'))").error
    assert rejected is not None and (rejected["name"], rejected["value"]) == ("RangeError", "r")


def test_node_top_level_await(node: Kernel) -> None:
    execution = node.run("const r = await Promise.resolve(41)\nconst {x} = {x: 'y'}\nr + 1")
    assert result_text(execution) == "42"
    assert (
        result_text(node.run("[r, x, await new Promise((ok) => setTimeout(() => ok('t'), 10))]")) == "[ 41, 'y', 't' ]"
    )
    assert result_text(node.run("for (const i of [1, 2]) { await null; console.log(i) }")) is None
    assert node.stdout == b"1\n2\n"


def test_node_interrupt_stops_a_busy_loop_and_keeps_state(node: Kernel) -> None:
    node.send("var x = 1; console.log('go'); while (true) {}")
    node.wait_stdout("go")
    node.interrupt()
    assert node.finish().events == [KEYBOARD_INTERRUPT, DONE]
    assert result_text(node.run("x")) == "1"


def test_node_interrupt_abandons_an_await(node: Kernel) -> None:
    # "go" once the code waits, not while its synchronous part ends: a SIGINT
    # as runInThisContext stops watching for it may be lost (see the kernel).
    node.send("setTimeout(() => console.log('go'), 10); await new Promise(() => {})")
    node.wait_stdout("go")
    node.interrupt()
    assert node.finish().events == [KEYBOARD_INTERRUPT, DONE]
    assert result_text(node.run("1")) == "1"


def test_node_interrupt_stops_a_child_process(node: Kernel) -> None:
    # "go" from the very process that then waits: `echo go; sleep 100` could be
    # interrupted between the two, leaving the sleep to run.
    child = [sys.executable, "-c", "print('go', flush=True); import time; time.sleep(100)"]
    node.send(
        f"require('child_process').execFileSync({json.dumps(child[0])}, {json.dumps(child[1:])}, {{stdio: 'inherit'}})"
    )
    node.wait_stdout("go")
    node.interrupt()
    assert node.finish().events == [KEYBOARD_INTERRUPT, DONE]


def test_node_sigint_while_idle_is_ignored(node: Kernel) -> None:
    node.interrupt()
    time.sleep(0.1)
    assert node.process.poll() is None
    assert result_text(node.run("'alive'")) == "'alive'"


def test_node_code_sees_no_protocol_variables(node: Kernel) -> None:
    assert result_text(node.run("Object.keys(process.env).filter((k) => k.startsWith('SCALEBOX_KERNEL'))")) == "[]"


def test_node_async_errors_do_not_end_the_kernel(node: Kernel) -> None:
    first = node.run("setTimeout(() => { throw new Error('boom') }, 0); Promise.reject(new Error('rejected')); 1")
    second = node.run("await new Promise((ok) => setTimeout(ok, 50)); 2")
    assert result_text(second) == "2"
    assert "Uncaught Error: boom" in first.stderr + second.stderr
    assert "Error: rejected" in first.stderr + second.stderr


def test_node_bad_request(node: Kernel) -> None:
    node.send_line("[1]")
    error = node.finish().error
    assert error is not None and error["value"].startswith("bad request")
    assert result_text(node.run("1")) == "1"
