"""agent.proto runs on the sandbox's own python3 (3.9+): grammar, imports, a real 3.9 run."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import json_format
from scalebox.generated import api_pb2

from tests.unit.agent_helpers import python39

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted((ROOT / "agent" / "proto").glob("*.py"))

# Modules a small stdlib-only package has no business loading at import time:
# each costs idle memory in every sandbox.
HEAVY = {"typing", "re", "json", "datetime", "base64", "dataclasses", "inspect", "collections", "functools"}


def test_there_are_sources() -> None:
    assert {p.name for p in SOURCES} >= {"__init__.py", "wire.py", "schema.py", "messages.py"}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_parses_as_python39(path: Path) -> None:
    ast.parse(path.read_text(), filename=str(path), feature_version=(3, 9))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_annotations_are_postponed(path: Path) -> None:
    """`X | None` and `list[int]` in annotations are only safe on 3.9 when they stay strings."""
    tree = ast.parse(path.read_text())
    assert any(
        isinstance(node, ast.ImportFrom)
        and node.module == "__future__"
        and any(a.name == "annotations" for a in node.names)
        for node in tree.body
    )


def _run(python: str, code: str, stdin: str = "") -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [python, "-c", code], input=stdin, capture_output=True, text=True, cwd=ROOT, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


_NEW_MODULES = "import sys; before = set(sys.modules); import agent.proto; print(sorted(set(sys.modules) - before))"


def test_import_loads_only_the_standard_library() -> None:
    loaded = ast.literal_eval(_run(sys.executable, _NEW_MODULES))
    for name in loaded:
        top = name.split(".")[0]
        assert top == "agent" or top in sys.stdlib_module_names, name
    assert not HEAVY & set(loaded)


# Decodes hex-encoded messages from stdin with agent.proto, prints their JSON
# and re-encodings: run under a real 3.9 and compared with the official classes.
_ROUND_TRIP = """
import json, sys
import agent.proto as p
out = []
for name, data in json.load(sys.stdin):
    cls = getattr(p, name)
    msg = cls.decode(bytes.fromhex(data))
    again = cls.from_json(json.loads(json.dumps(msg.to_json())))
    assert again == msg, (again, msg)
    out.append([msg.to_json(), msg.encode().hex()])
print(json.dumps(out))
"""


def test_real_python39_imports_only_the_standard_library() -> None:
    loaded = ast.literal_eval(_run(python39(), _NEW_MODULES))
    for name in loaded:
        top = name.split(".")[0]
        assert top == "agent" or top in sys.stdlib_module_names, name
    assert not HEAVY & set(loaded)


def test_real_python39_round_trips_official_messages() -> None:
    samples = [
        api_pb2.StartRequest(
            process=api_pb2.ProcessConfig(cmd="/bin/bash", args=["-l", "-c", "ls"], envs={"A": "1"}, cwd="/tmp"),
            pty=api_pb2.PTY(size=api_pb2.PTY.Size(cols=80, rows=24)),
            tag="t",
        ),
        api_pb2.StartResponse(
            event=api_pb2.ProcessEvent(end=api_pb2.ProcessEvent.EndEvent(exit_code=-9, status="killed"))
        ),
        api_pb2.ConnectResponse(event=api_pb2.ProcessEvent(data=api_pb2.ProcessEvent.DataEvent(stderr=b"\xff\x00"))),
        api_pb2.ListDirResponse(
            entries=[
                api_pb2.EntryInfo(
                    name="a", size=2**40, type=2, symlink_target="", modified_time={"seconds": 5, "nanos": 7}
                )
            ]
        ),
        api_pb2.SendSignalRequest(process=api_pb2.ProcessSelector(pid=0), signal=api_pb2.SIGNAL_SIGKILL),
        api_pb2.ExecuteResponse(
            result=api_pb2.Result(exit_code=-1, chart=api_pb2.Chart(elements=[{"pie_data": {"angle": 0.5}}]))
        ),
    ]
    request = json.dumps([[type(m).__name__, m.SerializeToString().hex()] for m in samples])
    replies = json.loads(_run(python39(), _ROUND_TRIP, stdin=request))
    for message, (as_json, encoded) in zip(samples, replies, strict=True):
        assert as_json == json_format.MessageToDict(message)
        assert type(message).FromString(bytes.fromhex(encoded)) == message
