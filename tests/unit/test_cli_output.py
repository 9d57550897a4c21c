"""CLI output: JSON exactly as the API's data, tables for people."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from cli.context import Settings
from cli.output import age, cell, duration, emit

DATA = {
    "sandboxes": [
        {"sandbox_id": "sbx-a1", "state": "running", "metadata": {"owner": "me"}, "cpu_count": 1, "name": "ü"},
        {"sandbox_id": "sbx-b2", "state": "paused", "metadata": {}, "cpu_count": 2, "name": "[red]x[/red]"},
    ],
    "pagination": {"page": 1, "limit": 100, "total": 2, "total_pages": 1, "offset": 0},
}


def settings(output: str) -> Settings:
    return Settings(server_url=None, api_key=None, ca_cert=None, output=output)


def test_json_is_the_data_exactly(capsys: pytest.CaptureFixture[str]) -> None:
    emit(DATA, settings("json"), rows=DATA["sandboxes"], columns=[("ID", "sandbox_id")])
    out = capsys.readouterr().out
    assert json.loads(out) == DATA
    assert "ü" in out  # not \u-escaped
    assert out.count("\n") > 5  # indented


def test_json_compact_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    emit(DATA, settings("json-compact"))
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert json.loads(out) == DATA


def test_a_list_is_a_table_with_the_chosen_columns(capsys: pytest.CaptureFixture[str]) -> None:
    columns = [("ID", "sandbox_id"), ("STATE", "state"), ("META", "metadata"), ("NAME", "name")]
    emit(DATA, settings("table"), rows=DATA["sandboxes"], columns=columns)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "STATE", "META", "NAME"]
    assert lines[2].split() == ["sbx-a1", "running", "owner=me", "ü"]
    # Data is never rich markup; empty values show as '-'.
    assert lines[3].split() == ["sbx-b2", "paused", "-", "[red]x[/red]"]
    assert all(line == line.rstrip() for line in lines), "no trailing blanks when piped"


def test_a_mapping_is_shown_one_field_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    emit({"sandbox_id": "sbx-a1", "ports": [8080, 3000], "secure": True}, settings("table"))
    lines = [line.split(None, 1) for line in capsys.readouterr().out.splitlines()]
    assert lines == [["sandbox_id", "sbx-a1"], ["ports", "8080, 3000"], ["secure", "yes"]]


def test_lines_are_printed_raw(capsys: pytest.CaptureFixture[str]) -> None:
    emit({"lines": ["[bold]a", "  b  "]}, settings("table"), rows=["[bold]a", "  b  "])
    assert capsys.readouterr().out == "[bold]a\n  b  \n"


def test_an_empty_list_says_so_on_stderr_only(capsys: pytest.CaptureFixture[str]) -> None:
    emit({"sandboxes": []}, settings("table"), rows=[], columns=[("ID", "sandbox_id")], empty="no sandboxes")
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "no sandboxes\n")


def test_a_scalar_prints_alone(capsys: pytest.CaptureFixture[str]) -> None:
    emit({"url": "https://8080-sbx-a1.sbx.localhost/"}, settings("table"), rows="https://8080-sbx-a1.sbx.localhost/")
    assert capsys.readouterr().out == "https://8080-sbx-a1.sbx.localhost/\n"


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, "-"), ("", "-"), ([], "-"), (False, "no"), ({"a": 1, "b": None}, "a=1, b=-"), (["x", 2], "x, 2"), (3, "3")],
)
def test_cells(value: object, text: str) -> None:
    assert cell(value) == text


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (59, "59s"), (61, "1m01s"), (900, "15m"), (3700, "1h01m"), (90_000, "1d01h")]
)
def test_durations(seconds: int, text: str) -> None:
    assert duration(seconds) == text


def test_age_of_an_iso_time() -> None:
    now = datetime(2024, 5, 1, 10, 5, tzinfo=UTC)
    assert age("2024-05-01T10:00:00Z", now) == "5m00s ago"
    assert age("not a time", now) == "not a time"
    assert age(None, now) == "-"
