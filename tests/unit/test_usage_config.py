"""`scalebox serve --prices FILE --meter-interval SECONDS` (and their environment variables)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from appliance.config import ConfigError, ServeConfig, add_serve_arguments, config_from_args
from controlplane.usage.prices import PriceTable


def _config(argv: list[str]) -> ServeConfig:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return config_from_args(parser.parse_args(argv))


def test_prices_default_to_free_and_load_from_the_named_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCALEBOX_PRICES", raising=False)
    assert _config([]).prices == PriceTable(currency="USD")
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"currency": "EUR", "cpu_hour": 0.04}))
    assert _config(["--prices", str(prices)]).prices == PriceTable(currency="EUR", cpu_hour=0.04)
    monkeypatch.setenv("SCALEBOX_PRICES", str(prices))
    assert _config([]).prices.cpu_hour == 0.04
    prices.write_text(json.dumps({"cpu": 1}))
    with pytest.raises(ConfigError, match=r"--prices: .*unknown field 'cpu'"):
        _config([])
    with pytest.raises(ConfigError, match="--prices"):
        _config(["--prices", str(tmp_path / "missing.json")])


def test_meter_interval_option_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCALEBOX_METER_INTERVAL", raising=False)
    assert _config([]).meter_interval == 15.0
    assert _config(["--meter-interval", "2"]).meter_interval == 2.0
    monkeypatch.setenv("SCALEBOX_METER_INTERVAL", "60")
    assert _config([]).meter_interval == 60.0
    for bad in ("0", "0.5", "-1", "nan", "3601", "often"):
        with pytest.raises(ConfigError, match="--meter-interval"):
            _config(["--meter-interval", bad])
