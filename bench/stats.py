"""Small statistics over samples: medians, nearest-rank percentiles, safe ratios, paired rounds."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100); NaN for no samples."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is zero."""
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b == 0:
        return None
    return a / b


def paired(a: Sequence[float], b: Sequence[float], op: Callable[[float, float], float | None]) -> float | None:
    """Median over rounds of op(a[i], b[i]): rounds are side by side, so drift between rounds cancels."""
    values = [v for x, y in zip(a, b, strict=False) if (v := op(x, y)) is not None]
    return median(values) if values else None


def summary(values: Sequence[float]) -> dict[str, float | int]:
    return {
        "n": len(values),
        "median": median(values),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "min": min(values) if values else math.nan,
        "max": max(values) if values else math.nan,
    }
