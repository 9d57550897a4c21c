"""Monthly invoices: a user's usage in one UTC calendar month, priced.

A month is `open` while usage may still arrive for it (until FINAL_AFTER past its
end: the last samples and traffic reports of the month land a little late), then
`final`: the API keeps the invoice as first computed after that (usage/store.py),
so a later change of prices does not rewrite a closed month.
"""

from __future__ import annotations

from typing import Any

from controlplane.usage.calc import Usage, period_bounds
from controlplane.usage.prices import DECIMALS, PriceTable, line_items

OPEN = "open"
FINAL = "final"
# Seconds after a month's end before its invoice is final.
FINAL_AFTER = 3600.0


def status_of(period: str, now: float) -> str:
    _, end = period_bounds(period)
    return FINAL if now >= end + FINAL_AFTER else OPEN


def usage_json(usage: Usage) -> dict[str, Any]:
    return {
        "cpu_seconds": round(usage.cpu_seconds, 3),
        "memory_gb_seconds": round(usage.memory_gb_seconds, 3),
        "storage_gb_seconds": round(usage.storage_gb_seconds, 3),
        "bytes_in": usage.bytes_in,
        "bytes_out": usage.bytes_out,
    }


def invoice(*, owner_id: str, period: str, usage: Usage, prices: PriceTable, status: str, iso: Any) -> dict[str, Any]:
    """The invoice of `period` (`YYYY-MM`); `iso` renders epoch seconds as the API does."""
    start, end = period_bounds(period)
    items = line_items(usage, prices)
    return {
        "invoice_id": f"inv-{owner_id}-{period}",
        "period": period,
        "period_start": iso(start),
        "period_end": iso(end),
        "status": status,
        "currency": prices.currency,
        "usage": usage_json(usage),
        "items": [i.to_json() for i in items],
        "total": round(sum(i.amount for i in items), DECIMALS),
        "prices": prices.to_json(),
    }
