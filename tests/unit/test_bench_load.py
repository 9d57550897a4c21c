"""bench.load: wrk's output parsed into requests/s, errors and latency percentiles."""

from __future__ import annotations

import pytest

from bench.client import Target
from bench.load import parse_wrk, wrk_command

KEEPALIVE = """\
Running 1s test @ http://127.0.0.1:18081/
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    11.09ms    5.16ms  30.00ms   72.19%
    Req/Sec   356.70     72.16   467.00     70.00%
  Latency Distribution
     50%   10.40ms
     75%   13.92ms
     90%   17.52ms
     99%   28.05ms
  360 requests in 1.02s, 1.36MB read
Requests/sec:    354.00
Transfer/sec:      1.34MB
"""

WITH_ERRORS = """\
Running 4s test @ https://8000-sbx-x.sbx.localhost:8443/
  1 threads and 64 connections
  Latency Distribution
     50%  850.00us
     75%    1.20ms
     90%    2.00ms
     99%    1.05s
  4000 requests in 4.00s, 1.00MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 100
Requests/sec:   1000.00
"""


def test_keepalive_run() -> None:
    res = parse_wrk(KEEPALIVE)
    assert res.requests == 360
    assert res.seconds == pytest.approx(1.02)
    assert res.errors == 0
    assert res.latency_p50_ms == pytest.approx(10.40)
    assert res.latency_p99_ms == pytest.approx(28.05)
    assert res.rps == pytest.approx(360 / 1.02)


def test_errors_units_and_failed_responses_left_out_of_rps() -> None:
    res = parse_wrk(WITH_ERRORS)
    assert res.errors == 3 + 2 + 100
    assert res.non_2xx == 100
    assert res.rps == pytest.approx((4000 - 100) / 4.0)
    assert res.latency_p50_ms == pytest.approx(0.85)
    assert res.latency_p99_ms == pytest.approx(1050.0)


def test_without_latency_distribution() -> None:
    res = parse_wrk("  10 requests in 500.00ms, 1KB read\n")
    assert res.seconds == pytest.approx(0.5)
    assert res.latency_p50_ms is None and res.latency_p99_ms is None


def test_garbage_is_an_error() -> None:
    with pytest.raises(ValueError):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_command_new_connection_per_request() -> None:
    target = Target("gateway https", "127.0.0.1", 8443, "8000-sbx-x.sbx.localhost:8443", tls=None)
    cmd = wrk_command("wrk", target, connections=32, seconds=4, close=True)
    assert cmd[:5] == ["wrk", "-t1", "-c32", "-d4s", "--latency"]
    assert cmd[cmd.index("-H") + 1] == "Connection: close"
    assert cmd[-1] == "http://8000-sbx-x.sbx.localhost:8443/"
    assert "-H" not in wrk_command("wrk", target, connections=64, seconds=4)
