"""bench.results: issue 6's targets from one run's numbers, and the Markdown around them."""

from __future__ import annotations

from typing import Any

from bench.results import NOT_MEASURED, Row, markdown, rows


def _by_metric(table: list[Row], start: str) -> Row:
    return next(r for r in table if r.metric.startswith(start))


def _run() -> dict[str, Any]:
    load = {
        "64": {
            "direct": {"rps": 20000.0, "added_p99_ms": None},
            "nginx http": {"rps": 10000.0, "added_p50_ms": 1.0, "added_p99_ms": 2.0},
            "gateway http": {"rps": 6000.0, "rps_ratio_vs_nginx": 0.6, "added_p50_ms": 2.0, "added_p99_ms": 6.5},
        },
        "256": {"gateway http": {"rps": 4000.0, "rps_ratio_vs_nginx": 0.4}, "nginx http": {"rps": 10000.0}},
    }
    return {
        "gateway": {"summary": {"load": load, "handshakes": {"ratio": 0.61, "gateway https": {"per_s": 610.0}}}},
        "create": {"appliance_create": {"median": 0.12, "p99": 0.2}, "raw_create": {"median": 0.1, "p99": 0.2}},
        "warm_pool": {"setting": "base=4", "available": False, "reason": "no pool"},
        "memory": {"requested": 100, "summary": {"n": 100, "mb_per_sandbox": 31.0}},
    }


def test_targets_met_or_not() -> None:
    table = rows(_run())
    assert _by_metric(table, "HTTP keep-alive req/s, 64").met == "yes"
    assert _by_metric(table, "HTTP keep-alive req/s, 256").met == "no"
    assert _by_metric(table, "HTTP added p99 latency over direct, 64").met == "no"
    assert _by_metric(table, "HTTP added p50 latency over direct, 64").met == "-"
    assert _by_metric(table, "new TLS handshakes/s, full").met == "yes"
    create = _by_metric(table, "sandbox create-to-ready p50 (vs")
    assert (create.ours, create.baseline, create.ratio, create.met) == ("120 ms", "100 ms", "1.20x", "yes")
    assert _by_metric(table, "sandbox create-to-ready p50, absolute").met == "yes"
    assert _by_metric(table, "memory per idle sandbox").met == "no"


def test_what_was_not_measured_says_so() -> None:
    table = rows(_run())
    tcp = _by_metric(table, "raw TCP throughput")
    assert (tcp.ours, tcp.met) == ("-", NOT_MEASURED)
    warm = _by_metric(table, "sandbox create-to-ready p50 with a warm pool")
    assert (warm.ours, warm.met) == ("warm pool: not available", NOT_MEASURED)
    # The agent phase did not run at all.
    assert _by_metric(table, 'commands.run("true") round trip p50').ours == "-"
    empty = rows({})
    assert {r.met for r in empty} <= {NOT_MEASURED, "-"}


def test_markdown_has_the_facts_and_the_table() -> None:
    text = markdown(
        {**_run(), "seconds": 500.0, "phase_seconds": {"create": 40.0}},
        machine={"machine": "2 cores, X", "kernel": "Linux 6"},
        date="2026-01-01 00:00 UTC",
        command="python -m bench --results bench/RESULTS.md",
        tables=["detail table"],
    )
    assert "- date: 2026-01-01 00:00 UTC" in text
    assert "- machine: 2 cores, X; Linux 6" in text
    assert "| metric | ours | baseline | ratio | target | met? |" in text
    assert "```text\ndetail table\n```" in text
