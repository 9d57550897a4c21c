"""The official Python SDK's code interpreter, unmodified, against a code-interpreter sandbox.

One appliance and one sandbox serve the module: every test works in a
context of its own (or the default one, whose state the tests account for).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.appliance import Appliance, stop_and_clean

pytestmark = pytest.mark.podman


@pytest.fixture(scope="module")
def app() -> Iterator[Appliance]:
    data_dir = Path(tempfile.mkdtemp(prefix="sbx-", dir="/tmp"))
    appliance = Appliance(data_dir=data_dir)
    try:
        appliance.start()
        yield appliance
    finally:
        stop_and_clean(appliance)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def sandbox(app: Appliance) -> Iterator[Any]:
    from scalebox.code_interpreter import Sandbox

    saved = {name: os.environ.get(name) for name in app.sdk_env()}
    os.environ.update(app.sdk_env())
    sbx = Sandbox.create()
    try:
        yield sbx
    finally:
        sbx.kill()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def context(sandbox: Any) -> Iterator[Any]:
    ctx = sandbox.create_code_context()
    try:
        yield ctx
    finally:
        sandbox.destroy_context(ctx)


def test_the_template_and_the_default_context(sandbox: Any) -> None:
    info = sandbox.get_info()
    assert info.template_id == "code-interpreter"
    first = sandbox.run_code("scalebox_default_state = 40\nscalebox_default_state + 1")
    assert first.error is None and first.text == "41"
    second = sandbox.run_code("scalebox_default_state + 2")
    assert second.text == "42"
    assert second.execution_count == first.execution_count + 1


def test_callbacks_see_stdout_stderr_results_and_errors(sandbox: Any, context: Any) -> None:
    seen: dict[str, list[Any]] = {"stdout": [], "stderr": [], "result": [], "error": []}
    execution = sandbox.run_code(
        "import sys\nprint('to out')\nprint('to err', file=sys.stderr)\ndisplay('shown')\n6 * 7",
        context=context,
        on_stdout=lambda m: seen["stdout"].append(m.content),
        on_stderr=lambda m: seen["stderr"].append(m.content),
        on_result=lambda r: seen["result"].append(r),
        on_error=lambda e: seen["error"].append(e),
    )
    assert "".join(seen["stdout"]) == "to out\n"
    assert "".join(seen["stderr"]) == "to err\n"
    assert [r.text for r in seen["result"]] == ["'shown'", "42"]
    assert [r.is_main_result for r in seen["result"]] == [False, True]
    assert seen["error"] == []
    assert execution.text == "42" and "".join(execution.logs.stdout) == "to out\n"

    failed = sandbox.run_code("raise ValueError('bad value')", context=context, on_error=seen["error"].append)
    assert [e.name for e in seen["error"]] == ["ValueError"]
    assert failed.error is not None and failed.error.value == "bad value"


def test_an_exception_has_its_name_value_and_traceback(sandbox: Any, context: Any) -> None:
    code = "def inner():\n    return {}['missing']\n\ndef outer():\n    return inner()\n\nouter()"
    execution = sandbox.run_code(code, context=context)
    error = execution.error
    assert error is not None
    assert error.name == "KeyError" and error.value == "'missing'"
    assert "in outer" in error.traceback and "in inner" in error.traceback
    assert "return {}['missing']" in error.traceback  # the cell's own line, from the cell
    assert "python_kernel" not in error.traceback  # no frames of the kernel itself
    syntax = sandbox.run_code("def broken(:\n    pass", context=context)
    assert syntax.error is not None and syntax.error.name == "SyntaxError"


def test_state_is_kept_in_a_context_and_not_shared(sandbox: Any) -> None:
    one = sandbox.create_code_context(cwd="/tmp")
    two = sandbox.create_code_context()
    try:
        assert one.language == "python" and one.cwd == "/tmp" and two.cwd == "/home/user"
        sandbox.run_code("import os\nvalue = 'one'\nos.chdir('/')", context=one)
        sandbox.run_code("value = 'two'", context=two)
        assert sandbox.run_code("value + os.getcwd()", context=one).text == "'one/'"
        assert sandbox.run_code("value", context=two).text == "'two'"
        missing = sandbox.run_code("value", language="python")  # the default context
        assert missing.error is not None and missing.error.name == "NameError"
        # Per-execution env vars reach the code, and only that execution.
        with_env = sandbox.run_code("os.environ.get('ONLY_NOW')", context=one, envs={"ONLY_NOW": "yes"})
        assert with_env.text == "'yes'"
        assert sandbox.run_code("os.environ.get('ONLY_NOW')", context=one).text is None
    finally:
        sandbox.destroy_context(one)
        sandbox.destroy_context(two)
    from scalebox.exceptions import SandboxException

    with pytest.raises(Exception) as gone:
        sandbox.run_code("1", context=one)
    assert "does not exist" in str(gone.value) or isinstance(gone.value, SandboxException)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height = struct.unpack(">II", data[16:24])
    # The chunk's CRC proves the header was not cut or mangled on the way.
    assert struct.unpack(">I", data[29:33])[0] == zlib.crc32(data[12:29])
    return width, height


def test_a_matplotlib_plot_comes_back_as_a_png(sandbox: Any, context: Any) -> None:
    code = (
        "import matplotlib.pyplot as plt\n"
        "fig, ax = plt.subplots(figsize=(4, 3))\n"
        "ax.plot([1, 2, 3], [1, 4, 9])\n"
        "ax.set_title('squares')\n"
        "plt.show()"
    )
    execution = sandbox.run_code(code, context=context)
    assert execution.error is None, execution.error
    pngs = [r.png for r in execution.results if r.png]
    assert len(pngs) == 1
    width, height = _png_size(base64.b64decode(pngs[0]))
    assert 200 < width < 600 and 150 < height < 450
    # Shown figures are closed: the next execution does not send them again.
    assert [r for r in sandbox.run_code("1", context=context).results if r.png] == []


def test_a_dataframe_comes_back_as_html_and_text(sandbox: Any, context: Any) -> None:
    code = "import pandas as pd\ndf = pd.DataFrame({'name': ['a', 'b'], 'score': [1.5, 2.5]})\ndf"
    execution = sandbox.run_code(code, context=context)
    assert execution.error is None, execution.error
    (result,) = execution.results
    assert result.is_main_result
    assert result.html is not None and "<table" in result.html and "score" in result.html
    assert result.text is not None and "name" in result.text and "2.5" in result.text
    as_json = sandbox.run_code("{'rows': len(df), 'mean': float(df.score.mean())}", context=context)
    # In extra for this SDK, whose Result cannot take the `json` field (agent/interpreter/results.py).
    assert json.loads(as_json.results[0].extra["application/json"]) == {"rows": 2, "mean": 2.0}


def test_an_infinite_loop_is_interrupted_and_the_context_survives(sandbox: Any, context: Any) -> None:
    from scalebox.exceptions import TimeoutException

    sandbox.run_code("kept = 'still here'", context=context)
    started = time.monotonic()
    with pytest.raises(TimeoutException, match="Execution timed out"):
        # The SDK sends neither `timeout` nor `request_timeout` on this call;
        # the execution's own limit is the SCALEBOX_EXECUTION_TIMEOUT variable.
        sandbox.run_code("while True:\n    pass", context=context, envs={"SCALEBOX_EXECUTION_TIMEOUT": "2"})
    assert 1.5 < time.monotonic() - started < 15
    after = sandbox.run_code("kept", context=context)
    assert after.error is None and after.text == "'still here'"
    assert "SCALEBOX" not in (sandbox.run_code("import os; str(sorted(os.environ))", context=context).text or "")


CANCEL_SCRIPT = """
import asyncio, time
from scalebox.code_interpreter.code_interpreter_async import AsyncSandbox

async def main():
    sbx = await AsyncSandbox.create()
    try:
        ctx = await sbx.create_code_context()
        await sbx.run_code("import time\\nkept = 1", context=ctx)
        task = asyncio.ensure_future(sbx.run_code("while True:\\n    time.sleep(0.05)", context=ctx))
        await asyncio.sleep(1.5)
        assert not task.done()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        started = time.monotonic()
        # The context is free only once the loop was interrupted: this waits for it.
        after = await sbx.run_code("kept + 1", context=ctx)
        assert after.text == "2", after
        print("waited", time.monotonic() - started)
        await sbx.destroy_context(ctx)
        print("cancel-ok")
    finally:
        await sbx.kill()

asyncio.run(main())
"""


def test_a_cancelled_call_interrupts_the_code(app: Appliance) -> None:
    # The async SDK runs in a process of its own: aiohttp reads SSL_CERT_FILE when it is imported.
    done = subprocess.run(
        [sys.executable, "-c", CANCEL_SCRIPT], env={**os.environ, **app.sdk_env()},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cancel-ok" in done.stdout
    waited = float(done.stdout.split("waited", 1)[1].split()[0])
    assert waited < 10


def test_bash_and_javascript(sandbox: Any) -> None:
    bash = sandbox.create_code_context(language="bash")
    js = sandbox.create_code_context(language="js")
    try:
        assert bash.language == "bash" and js.language == "javascript"
        sandbox.run_code("GREETING=hello; cd /tmp", context=bash)
        out = sandbox.run_code('echo "$GREETING from $(pwd)"', context=bash)
        assert "".join(out.logs.stdout) == "hello from /tmp\n" and out.error is None
        failed = sandbox.run_code("false", context=bash)
        assert failed.error is not None
        sandbox.run_code("const base = 20; function twice(x) { return 2 * x }", context=js)
        result = sandbox.run_code("console.log('log line'); twice(base) + 2", context=js)
        assert result.text == "42" and "".join(result.logs.stdout) == "log line\n"
        thrown = sandbox.run_code("throw new TypeError('nope')", context=js)
        assert thrown.error is not None and thrown.error.name == "TypeError" and thrown.error.value == "nope"
        by_language = sandbox.run_code("process.version", language="javascript")
        assert by_language.text is not None and by_language.text.startswith("'v")
    finally:
        sandbox.destroy_context(bash)
        sandbox.destroy_context(js)


def _envelope(flags: int, payload: bytes) -> bytes:
    return struct.pack(">BI", flags, len(payload)) + payload


def _messages(body: bytes) -> list[tuple[int, Any]]:
    out = []
    while body:
        flags, size = struct.unpack(">BI", body[:5])
        out.append((flags, json.loads(body[5 : 5 + size])))
        body = body[5 + size :]
    return out


def test_execute_with_the_json_codec(app: Appliance, sandbox: Any) -> None:
    url = app.url(sandbox.sandbox_id, "/sandboxagent.ExecutionService/Execute")
    headers = {
        "Content-Type": "application/connect+json",
        "X-Access-Token": sandbox._envd_access_token,
        "Connect-Timeout-Ms": "20000",
    }
    request = {"code": "print('json')\n{'a': [1, 2]}", "language": "python", "envVars": {"X": "1"}}
    with httpx.Client(verify=ssl.create_default_context(cafile=str(app.ca)), timeout=30) as client:
        reply = client.post(url, content=_envelope(0, json.dumps(request).encode()), headers=headers)
        assert reply.status_code == 200 and reply.headers["content-type"] == "application/connect+json"
        messages = _messages(reply.content)
        assert messages[0] == (0, {"stdout": {"content": "json\n"}})
        result = messages[1][1]["result"]
        assert result["isMainResult"] is True and result["text"] == "{'a': [1, 2]}"
        assert json.loads(result["json"]) == {"a": [1, 2]}
        assert messages[-1] == (2, {})

        # The client's own deadline interrupts the code too.
        slow = {"code": "import time\ntime.sleep(60)", "language": "python"}
        started = time.monotonic()
        reply = client.post(
            url, content=_envelope(0, json.dumps(slow).encode()), headers={**headers, "Connect-Timeout-Ms": "1500"}
        )
        assert time.monotonic() - started < 10
        (end,) = _messages(reply.content)
        assert end[0] == 2 and end[1]["error"]["code"] == "deadline_exceeded"

        bad = {"code": "1", "language": "cobol"}
        reply = client.post(url, content=_envelope(0, json.dumps(bad).encode()), headers=headers)
        (end,) = _messages(reply.content)
        assert end[1]["error"]["code"] == "invalid_argument" and "cobol" in end[1]["error"]["message"]
