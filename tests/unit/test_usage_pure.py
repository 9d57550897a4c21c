"""Metering's pure core: counter deltas, integration of samples, months, prices, invoices."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controlplane.usage.calc import (
    GIB,
    Usage,
    cpu_delta,
    elapsed,
    hour_of,
    max_gap,
    period_bounds,
    period_of,
    sample_usage,
    total,
)
from controlplane.usage.invoices import FINAL, FINAL_AFTER, OPEN, invoice, status_of
from controlplane.usage.prices import PriceTable, cost, line_items, load_prices, parse_prices


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]


def test_cpu_delta_follows_the_counter_through_resets() -> None:
    assert cpu_delta(10.0, 12.5) == 2.5
    assert cpu_delta(10.0, 10.0) == 0.0
    # Never read: all of the container's counter is new.
    assert cpu_delta(None, 3.0) == 3.0
    # Lower than before: the container restarted and its counter began again.
    assert cpu_delta(50.0, 4.0) == 4.0
    assert cpu_delta(None, -1.0) == 0.0


def test_a_sample_stands_for_the_time_since_the_later_of_last_sample_and_start() -> None:
    assert elapsed(now=100.0, last_sample=85.0, since=10.0, interval=15) == 15.0
    # Resumed after the last sample: only the time since the resume ran.
    assert elapsed(now=100.0, last_sample=20.0, since=95.0, interval=15) == 5.0
    # Just started, never sampled.
    assert elapsed(now=100.0, last_sample=None, since=98.0, interval=15) == 2.0
    assert elapsed(now=100.0, last_sample=None, since=None, interval=15) == 15.0
    # A gap in metering (the appliance was down) is not billed at the level seen after it.
    assert elapsed(now=1000.0, last_sample=100.0, since=None, interval=15) == max_gap(15) == 45.0
    # A clock that went back bills nothing rather than a negative amount.
    assert elapsed(now=100.0, last_sample=110.0, since=None, interval=15) == 0.0


def test_sample_usage_integrates_memory_and_storage_and_bills_a_paused_one_storage_only() -> None:
    running = sample_usage(cpu_seconds=1.5, mem_bytes=512 << 20, storage_gb=10, seconds=15.0, running=True)
    assert running == Usage(cpu_seconds=1.5, memory_gb_seconds=7.5, storage_gb_seconds=150.0)
    paused = sample_usage(cpu_seconds=1.5, mem_bytes=512 << 20, storage_gb=10, seconds=15.0, running=False)
    assert paused == Usage(storage_gb_seconds=150.0)
    assert total([running, paused, Usage(bytes_in=3, bytes_out=4)]) == Usage(
        cpu_seconds=1.5, memory_gb_seconds=7.5, storage_gb_seconds=300.0, bytes_in=3, bytes_out=4
    )
    assert Usage().is_zero() and not Usage(bytes_in=1).is_zero()


def test_hours_and_months_are_utc() -> None:
    assert hour_of(ts(2026, 3, 1, 13, 59, 59)) == ts(2026, 3, 1, 13)
    assert period_of(ts(2026, 3, 31, 23, 59, 59)) == "2026-03"
    assert period_of(ts(2026, 4, 1)) == "2026-04"
    assert period_bounds("2026-12") == (ts(2026, 12, 1), ts(2027, 1, 1))
    assert period_bounds("2028-02") == (ts(2028, 2, 1), ts(2028, 3, 1))
    for bad in ("2026-13", "2026-1", "26-01", "2026/01", "abcd-ef", "2026-00", "", "1969-12"):
        with pytest.raises(ValueError):
            period_bounds(bad)


PRICES = PriceTable(currency="EUR", cpu_hour=0.36, memory_gb_hour=0.018, storage_gb_month=7.3, traffic_gb=0.5)


def test_cost_is_usage_times_prices_in_billing_units() -> None:
    usage = Usage(
        cpu_seconds=3600 * 2,
        memory_gb_seconds=3600 * 10,
        storage_gb_seconds=3600 * 730 * 0.5,
        bytes_in=int(GIB),
        bytes_out=int(GIB),
    )
    items = {i.item: i for i in line_items(usage, PRICES)}
    assert items["cpu"].quantity == 2 and items["cpu"].amount == 0.72
    assert items["memory"].quantity == 10 and items["memory"].amount == 0.18
    assert items["storage"].quantity == 0.5 and items["storage"].amount == 3.65
    assert items["traffic"].quantity == 2 and items["traffic"].amount == 1.0
    assert cost(usage, PRICES) == pytest.approx(5.55)
    assert cost(usage, PriceTable()) == 0.0


def test_price_tables_load_from_json_or_toml_and_refuse_mistakes(tmp_path: Path) -> None:
    as_json = tmp_path / "prices.json"
    as_json.write_text(json.dumps({"currency": "eur", "cpu_hour": 0.36, "traffic_gb": 1}))
    assert load_prices(as_json) == PriceTable(currency="EUR", cpu_hour=0.36, traffic_gb=1.0)
    as_toml = tmp_path / "prices.toml"
    as_toml.write_text('currency = "USD"\nmemory_gb_hour = 0.01\nstorage_gb_month = 0.1\n')
    assert load_prices(as_toml) == PriceTable(memory_gb_hour=0.01, storage_gb_month=0.1)
    bad: list[object] = [
        [],
        {"cpu_hours": 1},
        {"cpu_hour": -1},
        {"cpu_hour": "1"},
        {"cpu_hour": True},
        {"cpu_hour": float("inf")},
        {"currency": "U$"},
    ]
    for data in bad:
        with pytest.raises(ValueError):
            parse_prices(data, "f")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_prices(tmp_path / "broken.json")
    with pytest.raises(ValueError, match="missing"):
        load_prices(tmp_path / "missing.json")


def test_a_month_is_open_until_an_hour_past_its_end_then_final() -> None:
    end = ts(2026, 4, 1)
    assert status_of("2026-03", ts(2026, 3, 15)) == OPEN
    assert status_of("2026-03", end + FINAL_AFTER - 1) == OPEN
    assert status_of("2026-03", end + FINAL_AFTER) == FINAL
    body = invoice(
        owner_id="usr-a",
        period="2026-03",
        usage=Usage(cpu_seconds=3600),
        prices=PRICES,
        status=FINAL,
        iso=lambda t: t,
    )
    assert body["period_start"] == ts(2026, 3, 1) and body["period_end"] == end
    assert body["total"] == 0.36 and body["currency"] == "EUR" and body["status"] == FINAL
    assert [i["item"] for i in body["items"]] == ["cpu", "memory", "storage", "traffic"]
