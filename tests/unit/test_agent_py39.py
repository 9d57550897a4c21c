"""The agent runs on the sandbox image's python3: 3.9 grammar, standard library plus the vendored packages."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from appliance.vendor import PACKAGES

AGENT_DIR = Path(__file__).resolve().parents[2] / "agent"
SOURCES = sorted(AGENT_DIR.rglob("*.py"))
VENDORED = set(PACKAGES)  # mounted read-only into every sandbox from the appliance's venv
# Standard modules of other Python versions than the one running the tests.
OTHER_STDLIB = {"_sha2", "_sha256"}


def test_there_are_sources() -> None:
    assert AGENT_DIR / "__main__.py" in SOURCES


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(AGENT_DIR)))
def test_parses_as_python39(path: Path) -> None:
    ast.parse(path.read_text(), filename=str(path), feature_version=(3, 9))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(AGENT_DIR)))
def test_annotations_are_not_evaluated(path: Path) -> None:
    """`X | None` in an annotation is only safe on 3.9 when annotations stay strings."""
    tree = ast.parse(path.read_text())
    annotated = any(
        isinstance(node, ast.AnnAssign) or (isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns)
        for node in ast.walk(tree)
    )
    future = any(
        isinstance(node, ast.ImportFrom)
        and node.module == "__future__"
        and any(a.name == "annotations" for a in node.names)
        for node in tree.body
    )
    assert future or not annotated


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(AGENT_DIR)))
def test_imports_only_the_standard_library(path: Path) -> None:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            allowed = top == "agent" or top in sys.stdlib_module_names or top in VENDORED | OTHER_STDLIB
            assert allowed, f"{path.name} imports {name}"
