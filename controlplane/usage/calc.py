"""Pure calculations of metering: no clock, no I/O; every time is an argument.

Units, the same everywhere: CPU in seconds; memory in GiB-seconds (bytes held x
seconds / 2**30); storage in GiB-seconds of the sandbox's allocation; traffic in
bytes. Usage is kept in hour buckets (UTC): a sample's whole amount goes to the
bucket of the time it was taken, so an interval that straddles an hour lands in
the later one (at most one interval's worth, seconds).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime

GIB = float(1 << 30)
HOUR = 3600


@dataclass(frozen=True, kw_only=True)
class Usage:
    """An amount of usage: of one sample, one bucket, one sandbox or one user's month."""

    cpu_seconds: float = 0.0
    memory_gb_seconds: float = 0.0
    storage_gb_seconds: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(Usage)})

    def is_zero(self) -> bool:
        return all(getattr(self, f.name) == 0 for f in fields(Usage))


USAGE_FIELDS = tuple(f.name for f in fields(Usage))


def total(items: list[Usage]) -> Usage:
    out = Usage()
    for item in items:
        out = out + item
    return out


def cpu_delta(previous: float | None, current: float) -> float:
    """CPU seconds used since the last reading of a container's cumulative counter.

    None: the container was never read, and its counter counts from its own start,
    all of it new. A counter lower than before was reset (the container restarted),
    so it counts from zero again.
    """
    if previous is None or current < previous:
        return max(0.0, current)
    return current - previous


def elapsed(*, now: float, last_sample: float | None, since: float | None, interval: float) -> float:
    """Seconds a sample stands for: back to the later of the last sample and the time the
    sandbox began running (`since`), never more than `max_gap(interval)`.

    The cap keeps a gap in metering (the appliance was down) from being billed at the
    level seen after it. With neither time known, one interval.
    """
    starts = [t for t in (last_sample, since) if t is not None]
    seconds = now - max(starts) if starts else interval
    return min(max(0.0, seconds), max_gap(interval))


def max_gap(interval: float) -> float:
    return 3 * interval


def sample_usage(*, cpu_seconds: float, mem_bytes: int, storage_gb: float, seconds: float, running: bool) -> Usage:
    """One sample's usage. A paused sandbox holds its storage only: its frozen memory is not billed."""
    return Usage(
        cpu_seconds=cpu_seconds if running else 0.0,
        memory_gb_seconds=mem_bytes / GIB * seconds if running else 0.0,
        storage_gb_seconds=storage_gb * seconds,
    )


def hour_of(ts: float) -> int:
    """The start of the UTC hour holding `ts` (epoch seconds)."""
    return int(ts // HOUR) * HOUR


def parse_period(text: str) -> tuple[int, int]:
    """`YYYY-MM` -> (year, month); ValueError says what is wrong."""
    year_text, dash, month_text = text.partition("-")
    if not (dash and len(year_text) == 4 and len(month_text) == 2 and (year_text + month_text).isdigit()):
        raise ValueError(f"period {text[:20]!r} is not YYYY-MM")
    year, month = int(year_text), int(month_text)
    if not (1970 <= year <= 9998 and 1 <= month <= 12):
        raise ValueError(f"period {text[:20]!r} is not a month from 1970-01 to 9998-12")
    return year, month


def period_of(ts: float) -> str:
    """The UTC calendar month holding `ts`, as `YYYY-MM`."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m")


def period_bounds(period: str) -> tuple[float, float]:
    """[start, end) of a `YYYY-MM` month in epoch seconds (UTC)."""
    year, month = parse_period(period)
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return start.timestamp(), end.timestamp()
