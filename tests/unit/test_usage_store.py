"""Usage in SQLite: hour buckets add up, readings and sessions survive a reopen, final invoices stay."""

from __future__ import annotations

from pathlib import Path

from controlplane.store import Store
from controlplane.usage.calc import Usage
from controlplane.usage.store import Bucketed, Reading

H = 3600 * 1000  # an hour boundary


def bucket(sandbox_id: str, hour: int, owner: str = "usr-a", **usage: float) -> Bucketed:
    return Bucketed(sandbox_id=sandbox_id, owner_id=owner, hour=hour, usage=Usage(**usage))  # type: ignore[arg-type]


def test_samples_of_one_hour_add_up_in_one_row_and_survive_a_reopen(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    usage = store.usage
    reading = Reading(container_id="c1", cpu_total=5.0, sampled_at=H + 30)
    usage.record([bucket("sbx-1", H, cpu_seconds=1.0, bytes_in=10)], {"sbx-1": reading})
    usage.record([bucket("sbx-1", H, cpu_seconds=2.0, memory_gb_seconds=0.5, bytes_out=7)], {})
    usage.record([bucket("sbx-1", H + 3600, cpu_seconds=4.0), bucket("sbx-2", H, storage_gb_seconds=9.0)], {})
    usage.record([bucket("sbx-9", H, owner="usr-b", cpu_seconds=100.0)], {})
    rows = store._db.execute("SELECT COUNT(*) FROM usage_hours").fetchone()[0]
    assert rows == 4
    store.close()

    store = Store(tmp_path / "db.sqlite")
    per = store.usage.per_sandbox("usr-a")
    assert per == {
        "sbx-1": Usage(cpu_seconds=7.0, memory_gb_seconds=0.5, bytes_in=10, bytes_out=7),
        "sbx-2": Usage(storage_gb_seconds=9.0),
    }
    # The window's resolution is the hour: the bucket holding `start` counts, `end` is exclusive.
    assert store.usage.per_sandbox("usr-a", start=H + 1800, end=H + 3600)["sbx-1"].cpu_seconds == 3.0
    assert store.usage.per_sandbox("usr-a", start=H + 3600)["sbx-1"].cpu_seconds == 4.0
    assert store.usage.per_sandbox("usr-a", sandbox_id="sbx-2") == {"sbx-2": Usage(storage_gb_seconds=9.0)}
    assert store.usage.per_sandbox("usr-b") == {"sbx-9": Usage(cpu_seconds=100.0)}
    assert store.usage.readings() == {"sbx-1": reading}
    store.usage.forget_readings(["sbx-1"])
    assert store.usage.readings() == {}
    store.close()


def test_usage_groups_by_utc_month(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    march_last_hour, april_first_hour = 1774998000, 1775001600  # 2026-03-31T23:00Z, 2026-04-01T00:00Z
    store.usage.record(
        [bucket("sbx-1", march_last_hour, cpu_seconds=1.0), bucket("sbx-1", april_first_hour, cpu_seconds=2.0)], {}
    )
    assert store.usage.per_period("usr-a") == {"2026-03": Usage(cpu_seconds=1.0), "2026-04": Usage(cpu_seconds=2.0)}
    store.close()


def test_sessions_open_once_close_once_and_measure_capacity(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    usage = store.usage
    usage.open_session(sandbox_id="sbx-1", owner_id="usr-a", cpu_count=2, memory_mb=2048, at=100.0)
    # A repeated event does not open a second one.
    usage.open_session(sandbox_id="sbx-1", owner_id="usr-a", cpu_count=2, memory_mb=2048, at=105.0)
    usage.close_session("sbx-1", at=160.0, event="sandbox.paused")
    usage.close_session("sbx-1", at=999.0, event="sandbox.terminated")  # nothing open: no change
    usage.open_session(sandbox_id="sbx-1", owner_id="usr-a", cpu_count=2, memory_mb=2048, at=200.0)
    usage.open_session(sandbox_id="sbx-2", owner_id="usr-b", cpu_count=1, memory_mb=512, at=200.0)
    store.close()

    store = Store(tmp_path / "db.sqlite")
    usage = store.usage
    found, count = usage.sessions("usr-a")
    assert count == 2
    assert [(s.started_at, s.ended_at, s.end_event) for s in found] == [
        (200.0, None, None),
        (100.0, 160.0, "sandbox.paused"),
    ]
    page, count = usage.sessions("usr-a", limit=1, offset=1)
    assert count == 2 and [s.started_at for s in page] == [100.0]
    assert [s.sandbox_id for s in usage.open_sessions()] == ["sbx-1", "sbx-2"]
    capacity = usage.capacity("usr-a", now=240.0)
    assert capacity.uptime_seconds == 100.0  # 60 closed + 40 open
    assert capacity.cpu_seconds == 200.0 and capacity.memory_gb_seconds == 200.0
    store.close()


def test_a_final_invoice_is_kept_as_first_written(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    assert store.usage.final_invoice("usr-a", "2026-03") is None
    first = store.usage.finalize_invoice("usr-a", "2026-03", {"total": 1.0}, at=1.0)
    again = store.usage.finalize_invoice("usr-a", "2026-03", {"total": 2.0}, at=2.0)
    assert first == again == {"total": 1.0}
    assert store.usage.final_invoice("usr-b", "2026-03") is None
    store.close()
