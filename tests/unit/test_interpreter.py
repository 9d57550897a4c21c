"""The code interpreter in the agent: pure parts, then a real agent on 127.0.0.1 running Python kernels.

The agent runs on this venv's Python; its kernels on the ``python3`` of PATH,
as in a sandbox. The official SDK's Connect client and its ``parse_output``
drive it, the way ``Sandbox.run_code`` does.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from scalebox.code_interpreter.models import Execution, parse_output
from scalebox.generated import api_pb2, api_pb2_connect

from agent.connect.errors import ConnectError
from agent.interpreter import kernelwire, languages, results, service
from tests.unit import test_agent_procsvc_http as procsvc

REPO = Path(__file__).resolve().parents[2]
TOKEN = "interpreter-test-token"
HEADERS = {"Authorization": "Bearer root", "X-Access-Token": TOKEN}


# --- pure ---------------------------------------------------------------------------------


def test_language_names() -> None:
    for name in ("", "python", "Python3", "py"):
        assert languages.resolve(name).name == "python"
    assert languages.resolve("sh").name == "bash"
    assert languages.resolve("nodejs").name == "javascript"
    with pytest.raises(languages.UnknownLanguage, match="'cobol' is not supported: use one of bash, javascript"):
        languages.resolve("cobol")


def test_kernel_events_are_read_line_by_line() -> None:
    reader = kernelwire.EventReader(max_line=200)
    line = b'{"event": "result", "data": {"text/plain": "1", "bad": 2}, "main": true}\n'
    assert reader.feed(line[:10]) == []
    assert reader.feed(line[10:] + b'{"event": "done"}\n{"event": "err') == [
        kernelwire.ResultEvent({"text/plain": "1"}, True),
        kernelwire.Done(),
    ]
    assert reader.feed(b'or", "name": "E", "value": "v"}\n') == [kernelwire.ErrorEvent("E", "v", "")]
    with pytest.raises(kernelwire.KernelProtocolError, match="not a JSON line"):
        reader.feed(b"garbage\n")
    with pytest.raises(kernelwire.KernelProtocolError, match="unknown event"):
        kernelwire.EventReader().feed(b'{"event": "what"}\n')
    with pytest.raises(kernelwire.KernelProtocolError, match="longer than 200 bytes"):
        kernelwire.EventReader(max_line=200).feed(b"x" * 201)
    request = kernelwire.encode_request("print('é')\n", {"A": "1"})
    assert request.endswith(b"\n") and request.count(b"\n") == 1
    assert json.loads(request) == {"code": "print('é')\n", "env": {"A": "1"}}


def test_a_mime_bundle_maps_onto_result_fields() -> None:
    reply = results.result_message(
        {"text/plain": "t", "image/png": "iVBO", "application/json": "[1]", "application/x-thing": "x"},
        main=True,
        execution_count=3,
        started_ns=1_000_000_000,
        finished_ns=2_000_000_000,
    )
    result = reply.result
    assert (result.text, result.png, result.json) == ("t", "iVBO", "[1]")
    assert result.extra == {"application/x-thing": "x"}
    for_python_sdk = results.result_message(
        {"application/json": "[1]", "text/plain": "t"},
        main=False,
        execution_count=1,
        started_ns=0,
        finished_ns=0,
        json_in_extra=True,
    ).result
    assert for_python_sdk.json == "" and for_python_sdk.extra == {"application/json": "[1]"}
    assert results.json_fields_break("python-urllib3/2.8.0")
    assert results.json_fields_break("Python/3.11 aiohttp/3.9.5")
    assert not results.json_fields_break("connect-es/1.4") and not results.json_fields_break(None)
    assert result.is_main_result and result.execution_count == 3
    assert result.finished_at.seconds == 2


def test_the_time_limit() -> None:
    assert service._time_limit(None, None) == service.DEFAULT_TIMEOUT
    assert service._time_limit(5.0, None) == 5.0
    assert service._time_limit(None, "2.5") == 2.5
    assert service._time_limit(5.0, "2") == 2.0
    assert service._time_limit(1.0, "2") == 1.0
    assert service._time_limit(None, "0") is None  # no limit, on request
    assert service._time_limit(3.0, "0") == 3.0  # the client's deadline still holds
    for bad in ("soon", "-1", "inf", "nan"):
        with pytest.raises(ConnectError, match="not a number of seconds"):
            service._time_limit(None, bad)


# --- a real agent -----------------------------------------------------------------------------


class Agent(procsvc.Agent):
    """The process tests' agent harness, with the interpreter's calls."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        super().__init__(proc, port, log)
        pool = urllib3.PoolManager(headers=HEADERS)
        self.execution = api_pb2_connect.ExecutionServiceClient(base_url=self.url, http_client=pool)
        self.contexts = api_pb2_connect.ContextServiceClient(base_url=self.url, http_client=pool)

    def run(self, code: str, context: str = "", language: str = "", **env: str) -> Execution:
        execution = Execution()
        request = api_pb2.ExecuteRequest(code=code, context_id=context, language=language, env_vars=env)
        for reply in self.execution.execute(request, extra_headers=HEADERS):
            parse_output(execution, reply)
        return execution

    def create(self, language: str = "python", cwd: str = "") -> Any:
        request = api_pb2.CreateContextRequest(language=language, cwd=cwd)
        return self.contexts.create_context(request, extra_headers=HEADERS)

    def destroy(self, context_id: str) -> None:
        self.contexts.destroy_context(api_pb2.DestroyContextRequest(context_id=context_id), extra_headers=HEADERS)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    work = tmp_path_factory.mktemp("interp")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALEBOX_")}
    port = procsvc._free_port()
    env.update({"SCALEBOX_AGENT_PORT": str(port), "SCALEBOX_ACCESS_TOKEN": TOKEN})
    log = work / "agent.err"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent"], cwd=REPO, env=env, stdin=subprocess.DEVNULL, stderr=err
        )
    running = Agent(proc, port, log)
    deadline = time.monotonic() + 10
    while not running.healthy():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    try:
        yield running
    finally:
        proc.terminate()
        proc.wait(10)
        text = log.read_text()
        assert '"event":"rpc_error"' not in text, text
        assert '"event":"loop_error"' not in text, text


@pytest.fixture
def ctx(agent: Agent) -> Iterator[str]:
    context = agent.create()
    try:
        yield str(context.id)
    finally:
        agent.destroy(context.id)


def test_results_output_and_state(agent: Agent, ctx: str) -> None:
    first = agent.run("x = 20\nprint('a')\nprint('b')\nx * 2", ctx)
    assert "".join(first.logs.stdout) == "a\nb\n"
    assert first.text == "40" and first.execution_count == 1
    second = agent.run("x + 2", ctx)
    assert second.text == "22" and second.execution_count == 2
    assert agent.run("y = 1", ctx).results == []  # no trailing expression, no result
    assert agent.run("x;", ctx).results == []  # a trailing semicolon silences it, as in a notebook
    assert agent.run("None", ctx).results == []


def test_output_and_results_keep_their_order(agent: Agent, ctx: str) -> None:
    code = "print('before')\ndisplay(1)\nprint('between')\ndisplay({'k': 2})\nprint('after')\n'last'"
    events: list[str] = []
    execution = Execution()
    request = api_pb2.ExecuteRequest(code=code, context_id=ctx)
    for reply in agent.execution.execute(request, extra_headers=HEADERS):
        parse_output(execution, reply)
        events.append(reply.WhichOneof("event") or "")
    assert events == ["stdout", "result", "stdout", "result", "stdout", "result"]
    assert [r.text for r in execution.results] == ["1", "{'k': 2}", "'last'"]
    # In extra, not in `json`, for this SDK: see agent/interpreter/results.py.
    assert execution.results[1].json_data is None
    assert json.loads(execution.results[1].extra["application/json"]) == {"k": 2}
    assert [r.is_main_result for r in execution.results] == [False, False, True]


def test_rich_reprs_and_a_broken_one(agent: Agent, ctx: str) -> None:
    code = (
        "class Card:\n"
        "    def _repr_html_(self): return '<b>card</b>'\n"
        "    def _repr_markdown_(self): return '**card**'\n"
        "    def _repr_png_(self): return b'\\x89PNG fake'\n"
        "    def _repr_latex_(self): raise RuntimeError('broken')\n"
        "    def __repr__(self): return 'Card()'\n"
        "Card()"
    )
    (result,) = agent.run(code, ctx).results
    assert (result.text, result.html, result.markdown, result.latex) == ("Card()", "<b>card</b>", "**card**", "")
    assert result.png == "iVBORyBmYWtl"  # base64 of the bytes
    (cls,) = agent.run("Card", ctx).results  # the class, not an instance: no _repr_html_ call
    assert cls.html == "" and cls.text == "<class '__main__.Card'>"


def test_errors(agent: Agent, ctx: str) -> None:
    error = agent.run("def f():\n    1 / 0\nf()", ctx).error
    assert error is not None and (error.name, error.value) == ("ZeroDivisionError", "division by zero")
    assert 'File "<cell-1>", line 2, in f' in error.traceback and "1 / 0" in error.traceback
    assert "python_kernel" not in error.traceback
    syntax = agent.run("if True print(1)", ctx).error
    assert syntax is not None and syntax.name == "SyntaxError"
    exit_ = agent.run("import sys\nsys.exit(3)", ctx).error
    assert exit_ is not None and (exit_.name, exit_.value) == ("SystemExit", "3")
    assert agent.run("1 + 1", ctx).text == "2"  # sys.exit did not end the kernel


def test_top_level_await(agent: Agent, ctx: str) -> None:
    assert (
        agent.run("import asyncio\nawait asyncio.sleep(0.01)\nawait asyncio.sleep(0, 'slept')", ctx).text == "'slept'"
    )


def test_env_vars_for_one_execution(agent: Agent, ctx: str) -> None:
    assert agent.run("import os\nos.environ.get('ONCE')", ctx, ONCE="yes").text == "'yes'"
    assert agent.run("os.environ.get('ONCE')", ctx).results == []
    assert agent.run(
        "import subprocess\nsubprocess.run(['sh', '-c', 'echo $ONCE'])", ctx, ONCE="child"
    ).logs.stdout == ["child\n"]
    kernel_vars = agent.run("sorted(k for k in os.environ if k.startswith('SCALEBOX'))", ctx).text
    assert kernel_vars == "[]"


def test_contexts(agent: Agent, tmp_path: Path) -> None:
    one = agent.create(cwd=str(tmp_path))
    two = agent.create(language="python3")
    try:
        assert one.language == "python" and one.cwd == str(tmp_path) and one.id != two.id
        assert one.created_at.seconds > 0
        agent.run("v = 'one'", one.id)
        assert agent.run("v", two.id).error is not None  # not shared
        assert agent.run("import os\nos.getcwd()", one.id).text == repr(str(tmp_path))
        assert agent.run("v", one.id, language="python").text == "'one'"
        with pytest.raises(Exception, match="runs python, not 'bash'"):
            agent.run("v", one.id, language="bash")
    finally:
        agent.destroy(one.id)
        agent.destroy(two.id)
    with pytest.raises(Exception, match="does not exist"):
        agent.run("1", one.id)
    with pytest.raises(Exception, match="does not exist"):
        agent.destroy(one.id)
    with pytest.raises(Exception, match="language 'cobol' is not supported"):
        agent.create(language="cobol")
    with pytest.raises(Exception, match="no such file or directory"):
        agent.create(cwd="/no/such/dir")


def test_the_default_context_is_per_language_and_made_on_first_use(agent: Agent) -> None:
    agent.run("shared_default = 7")
    assert agent.run("shared_default", language="python3").text == "7"


def test_a_deadline_interrupts_and_the_state_is_kept(agent: Agent, ctx: str) -> None:
    agent.run("import time\nkept = 'yes'", ctx)
    started = time.monotonic()
    with pytest.raises(Exception, match=r"execution deadline exceeded after 1 s: the code was interrupted"):
        agent.run("while True:\n    pass", ctx, SCALEBOX_EXECUTION_TIMEOUT="1")
    assert time.monotonic() - started < 5
    assert agent.run("kept", ctx).text == "'yes'"
    # A blocking call is interrupted too.
    with pytest.raises(Exception, match="deadline exceeded"):
        agent.run("time.sleep(60)", ctx, SCALEBOX_EXECUTION_TIMEOUT="0.5")
    assert agent.run("kept", ctx).text == "'yes'"


def test_code_that_ignores_interrupts_is_killed_and_the_context_restarts(agent: Agent, ctx: str) -> None:
    agent.run("import signal, time\nlost = 1", ctx)
    started = time.monotonic()
    with pytest.raises(Exception, match="deadline exceeded"):
        code = "signal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    time.sleep(0.01)"
        agent.run(code, ctx, SCALEBOX_EXECUTION_TIMEOUT="0.5")
    after = agent.run("lost", ctx)  # waits for the kill
    assert time.monotonic() - started < 10
    assert after.error is not None and after.error.name == "NameError"  # a fresh interpreter
    assert agent.run("1 + 1", ctx).text == "2"


def test_an_interpreter_that_exits_is_started_again(agent: Agent, ctx: str) -> None:
    agent.run("gone = 1", ctx)
    error = agent.run("import os\nos._exit(7)", ctx).error
    assert error is not None and error.name == "InterpreterExited" and "status 7" in error.value
    fresh = agent.run("'gone' in globals()", ctx)
    assert fresh.text == "False"


def test_a_client_that_leaves_interrupts_the_code(agent: Agent, ctx: str) -> None:
    agent.run("import time\nstate = 'kept'", ctx)
    body = api_pb2.ExecuteRequest(code="while True:\n    time.sleep(0.01)", context_id=ctx).SerializeToString()
    sock = socket.create_connection(("127.0.0.1", agent.port))
    head = (
        "POST /sandboxagent.ExecutionService/Execute HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/connect+proto\r\nX-Access-Token: {TOKEN}\r\n"
        f"Content-Length: {5 + len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + b"\0" + len(body).to_bytes(4, "big") + body)
    sock.settimeout(10)
    assert sock.recv(12) == b"HTTP/1.1 200"
    time.sleep(0.5)
    sock.close()
    started = time.monotonic()
    assert agent.run("state", ctx).text == "'kept'"  # the loop was interrupted, the state kept
    assert time.monotonic() - started < 5


def test_executions_in_one_context_queue(agent: Agent, ctx: str) -> None:
    agent.run("import time\norder = []", ctx)
    results: list[str | None] = []

    def slow() -> None:
        results.append(agent.run("time.sleep(0.5)\norder.append('slow')\n'slow'", ctx).text)

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.2)
    fast = agent.run("order.append('fast')\norder", ctx)
    thread.join(10)
    assert results == ["'slow'"] and fast.text == "['slow', 'fast']"


def test_a_lot_of_output_streams_through(agent: Agent, ctx: str) -> None:
    execution = agent.run("import sys\nfor i in range(20000):\n    sys.stdout.write('%06d ' % i * 20 + '\\n')", ctx)
    text = "".join(execution.logs.stdout)
    assert len(text) == 20000 * 141
    assert text.startswith("000000 000000") and text.endswith("019999 \n")


def test_unsupported_language_and_bad_env(agent: Agent) -> None:
    with pytest.raises(Exception, match="'cobol' is not supported"):
        agent.run("1", language="cobol")
    with pytest.raises(Exception, match="env var name 'A=B' is not valid"):
        agent.run("1", **{"A=B": "1"})


def test_a_template_without_the_language_says_which_to_use() -> None:
    import asyncio

    from agent.init import Reaper
    from agent.interpreter.kernel import Kernel, KernelStartError
    from agent.users import lookup

    missing = languages.Language("javascript", "scalebox-no-such-node", ("scalebox-no-such-node", "kernel.js"))

    async def start() -> None:
        await Kernel.start(missing, lookup("root"), "/", dict(os.environ), Reaper())

    with pytest.raises(KernelStartError, match=r"needs 'scalebox-no-such-node'.*code-interpreter template") as info:
        asyncio.run(start())
    assert info.value.code == "failed_precondition"
