"""The price table and what an amount of usage costs under it.

A file (JSON, or TOML when its name ends in .toml) names any of these, each a
price per unit in `currency`; a missing one is free:

    {"currency": "USD", "cpu_hour": 0.05, "memory_gb_hour": 0.01,
     "storage_gb_month": 0.10, "traffic_gb": 0.09}

Traffic is billed both ways (bytes in and out). GB means GiB (2**30 bytes), as
storage_gb does everywhere in the API; a month of storage is 730 hours (a year
of 8760 over twelve), whatever the length of the calendar month.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controlplane.usage.calc import GIB, HOUR, Usage

STORAGE_MONTH_HOURS = 730
# Amounts are rounded here, not in between: a thousand tiny samples must add up.
DECIMALS = 6
_PRICES = ("cpu_hour", "memory_gb_hour", "storage_gb_month", "traffic_gb")


@dataclass(frozen=True, kw_only=True)
class PriceTable:
    currency: str = "USD"
    cpu_hour: float = 0.0
    memory_gb_hour: float = 0.0
    storage_gb_month: float = 0.0
    traffic_gb: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"currency": self.currency, **{name: getattr(self, name) for name in _PRICES}}


@dataclass(frozen=True, kw_only=True)
class LineItem:
    item: str
    quantity: float
    unit: str
    unit_price: float
    amount: float

    def to_json(self) -> dict[str, Any]:
        return {
            "item": self.item,
            "quantity": round(self.quantity, DECIMALS),
            "unit": self.unit,
            "unit_price": self.unit_price,
            "amount": self.amount,
        }


def parse_prices(data: Any, where: str) -> PriceTable:
    """A price table from a decoded file; ValueError names the field to fix."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object of prices, got {type(data).__name__}")
    unknown = sorted(set(data) - {"currency", *_PRICES})
    if unknown:
        raise ValueError(f"{where}: unknown field {unknown[0]!r}; the fields are currency, {', '.join(_PRICES)}")
    currency = data.get("currency", "USD")
    if not (isinstance(currency, str) and 1 <= len(currency) <= 8 and currency.isascii() and currency.isalpha()):
        raise ValueError(f"{where}: currency must be a code of letters such as USD")
    prices: dict[str, float] = {}
    for name in _PRICES:
        value = data.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{where}: {name} must be a number of {currency} at least 0")
        prices[name] = float(value)
    return PriceTable(currency=currency.upper(), **prices)


def load_prices(path: Path) -> PriceTable:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode()) if path.suffix == ".toml" else json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {exc}") from None
    return parse_prices(data, str(path))


def line_items(usage: Usage, prices: PriceTable) -> list[LineItem]:
    """What each kind of usage costs, in billing units."""
    quantities = (
        ("cpu", usage.cpu_seconds / HOUR, "cpu_hour", prices.cpu_hour),
        ("memory", usage.memory_gb_seconds / HOUR, "gb_hour", prices.memory_gb_hour),
        ("storage", usage.storage_gb_seconds / HOUR / STORAGE_MONTH_HOURS, "gb_month", prices.storage_gb_month),
        ("traffic", (usage.bytes_in + usage.bytes_out) / GIB, "gb", prices.traffic_gb),
    )
    return [
        LineItem(item=item, quantity=quantity, unit=unit, unit_price=price, amount=round(quantity * price, DECIMALS))
        for item, quantity, unit, price in quantities
    ]


def cost(usage: Usage, prices: PriceTable) -> float:
    return round(sum(item.amount for item in line_items(usage, prices)), DECIMALS)
