"""The compact text table of one run."""

from __future__ import annotations

import math
from typing import Any

from bench.gateway import GatewayResult, headline
from bench.stats import median, ratio

# Rows measured once per round (a few seconds per target, targets rotated within
# the round): their ratios are the median of per-round ratios, which cancels
# most of the drift of a shared machine between rounds.
PER_ROUND = {"rps": "rps", "load_p99_ms": "load_p99_ms", "cpu_us_per_req": "proxy_cpu_us_per_req",
             "transfer_mib_s": "transfer_mib_s"}  # fmt: skip

ROWS = [
    ("latency p50 ms (keep-alive, sequential)", "latency_p50_ms", "{:.3f}"),
    ("latency p99 ms (keep-alive, sequential)", "latency_p99_ms", "{:.3f}"),
    ("new connection + GET p50 ms (Conn: close)", "connect_p50_ms", "{:.3f}"),
    ("throughput req/s (8 connections)", "rps", "{:.0f}"),
    ("latency p99 ms under that load", "load_p99_ms", "{:.2f}"),
    ("proxy CPU us per request", "cpu_us_per_req", "{:.1f}"),
    ("large download MiB/s", "transfer_mib_s", "{:.0f}"),
]
PAIRS = [
    ("gw http / nginx http", "gateway http", "nginx http"),
    ("gw https / nginx https", "gateway https", "nginx https"),
    ("gw http / direct", "gateway http", "direct"),
    ("gw https / direct", "gateway https", "direct"),
]


def _fmt(value: float | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return spec.format(value)


def paired_ratio(result: GatewayResult, key: str, a: str, b: str) -> float | None:
    """Median over rounds of a/b for a per-round metric; ratio of medians otherwise."""
    if key in PER_ROUND:
        samples: dict[str, list[float]] = getattr(result, PER_ROUND[key])
        pairs = [ratio(x, y) for x, y in zip(samples.get(a, []), samples.get(b, []), strict=False)]
        values = [r for r in pairs if r is not None]
        return median(values) if values else None
    heads = headline(result)
    return ratio(heads[a][key], heads[b][key])


def ratios(result: GatewayResult) -> dict[str, dict[str, float | None]]:
    """Every row's ratio for every pair of targets present, as the table shows them."""
    present = set(result.targets)
    return {
        label: {key: paired_ratio(result, key, a, b) for _, key, _ in ROWS}
        for label, a, b in PAIRS
        if a in present and b in present
    }


def create_table(data: dict[str, Any]) -> str:
    n = data["appliance_create"]["n"]
    lines = [f"create to ready, then delete (n={n} each, interleaved; seconds)", f"  {'':38}{'median':>9}{'p90':>9}"]
    for label, key in [
        ("appliance POST /v1/sandboxes (sync)", "appliance_create"),
        ("raw podman run + answering", "raw_create"),
        ("  of which `podman run -d` returned", "raw_run_returned"),
        ("appliance DELETE", "appliance_delete"),
        ("raw podman rm -f -t 0", "raw_delete"),
    ]:
        lines.append(f"  {label:38}{data[key]['median']:9.3f}{data[key]['p90']:9.3f}")
    lines.append(
        f"  {'ratio appliance/raw, create':38}{_fmt(data['ratio_create_median'], '{:.2f}x'):>9}"
        f"{_fmt(data['ratio_create_p90'], '{:.2f}x'):>9}"
    )
    lines.append(f"  {'ratio appliance/raw, delete':38}{_fmt(data['ratio_delete_median'], '{:.2f}x'):>9}")
    return "\n".join(lines)


def gateway_table(result: GatewayResult) -> str:
    heads = headline(result)
    names = result.targets
    width = 42
    lines = [f"gateway vs nginx vs direct (medians over rounds; load tool: {result.load_tool or '-'})"]
    lines.append("  " + " " * width + "".join(f"{n:>15}" for n in names))
    for label, key, spec in ROWS:
        lines.append(f"  {label:{width}}" + "".join(f"{_fmt(heads[n][key], spec):>15}" for n in names))
    pairs = [p for p in PAIRS if p[1] in heads and p[2] in heads]
    lines.append("")
    lines.append("  ratios (latency, CPU: >1 is slower; req/s, MiB/s: <1 is slower; per-round rows: median of")
    lines.append("  the per-round ratios)")
    lines.append("  " + " " * width + "".join(f"{p[0]:>24}" for p in pairs))
    for label, key, _ in ROWS:
        cells = [_fmt(paired_ratio(result, key, a, b), "{:.2f}x") for _, a, b in pairs]
        if key == "cpu_us_per_req":
            cells = [c if b != "direct" else "-" for c, (_, _, b) in zip(cells, pairs, strict=True)]
        lines.append(f"  {label:{width}}" + "".join(f"{c:>24}" for c in cells))
    if result.gateway_internal_ms:
        internal = sorted(result.gateway_internal_ms)
        lines.append("")
        lines.append(
            f"  gateway's own logged time per request (gateway.request ms): median {internal[len(internal) // 2]:.3f}"
        )
    errors = {k: v for k, v in result.load_errors.items() if v}
    if errors:
        lines.append(f"  load errors (non-2xx or socket): {errors}")
    lines += [f"  note: {n}" for n in result.notes]
    return "\n".join(lines)
