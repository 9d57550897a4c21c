"""Fixtures shared by the unit tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from appliance import log


@pytest.fixture
def log_events(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """The log lines written during the test (appliance.log), parsed."""
    lines: list[dict[str, Any]] = []

    class Sink:
        def write(self, text: str) -> None:
            lines.extend(json.loads(line) for line in text.splitlines() if line)

        def flush(self) -> None:
            pass

    monkeypatch.setattr(log, "_out", Sink())
    yield lines
