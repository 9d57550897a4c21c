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


def agent_table(data: dict[str, Any]) -> str:
    """`data` is `AgentResult.to_json()`."""
    head = data["headline"]
    cpu = data["cpu_us_per_call"]
    sbx = data.get("sandbox", {})
    cpus = (sbx.get("nano_cpus") or 0) / 1e9
    mem = (sbx.get("memory_bytes") or 0) / (1 << 20)
    width = 34
    title = 'commands.run("true") latency, ms'
    lines = [
        f"agent through the official sync SDK (one sandbox: {cpus:g} CPU, {mem:.0f} MiB; MB = 10^6 bytes)",
        f"  {title:{width}}{'p50':>9}{'p99':>9}{'n':>6}   CPU us/call: {'client':>7}{'gateway':>8}{'agent':>7}",
    ]
    for name, row in head["commands"].items():
        parts = cpu.get(name, {}) if name.startswith("sdk") else {}
        cells = "".join(f"{_fmt(parts.get(who), '{:.0f}'):>{w}}" for who, w in (("client", 7), ("gateway", 8),
                                                                              ("agent", 7)))  # fmt: skip
        label = "podman exec <ctr> true" if name == "podman exec" else name
        lines.append(
            f"  {label:{width}}{_fmt(row['p50_ms'], '{:.2f}'):>9}{_fmt(row['p99_ms'], '{:.2f}'):>9}{row['n']:>6}"
            + (f"   {'':13}{cells}" if parts else "")
        )
    n_up = len(next(iter(data["upload_mb_s"].values()), {}).get("samples", []))
    lines.append("")
    who = ("client", "gateway", "agent")
    busy = data.get("busy_median", {})
    lines.append(
        f"  {f'transfer MB/s (median of {n_up})':{width}}{'upload':>9}{'download':>10}"
        f"   busy up: {''.join(f'{w:>8}' for w in who)}   down: {''.join(f'{w:>8}' for w in who)}"
    )
    for name in head["upload_mb_s"]:
        cells = [
            "".join(f"{_fmt(busy.get(name, {}).get(way, {}).get(w), '{:.2f}'):>8}" for w in who)
            for way in ("upload", "download")
        ]
        lines.append(
            f"  {name:{width}}{_fmt(head['upload_mb_s'][name], '{:.0f}'):>9}"
            f"{_fmt(head['download_mb_s'].get(name), '{:.0f}'):>10}"
            f"   {'':9}{cells[0]}   {'':5}{cells[1]}"
        )
    lines.append("  (busy: CPU seconds per wall second during the transfer; 1.00 is one core)")
    lines.append("")
    lines.append("  ratios (latency: >1 is slower; MB/s: <1 is slower; MB/s: median of per-round ratios)")
    for label, value in data["ratios"].items():
        lines.append(f"  {label:52}{_fmt(value, '{:.2f}x'):>8}")
    rss = head["rss_mb"]
    lines.append("")
    lines.append(
        f"  agent PID 1 VmRSS MB: after boot {_fmt(rss['boot'], '{:.1f}')}, after the benchmark "
        f"{_fmt(rss['after'], '{:.1f}')} (growth {_fmt(rss['growth'], '{:+.1f}')}; peak VmHWM "
        f"{_fmt(rss['peak_hwm'], '{:.1f}')})"
    )
    lines.append("")
    lines.append("  issue goals")
    for label, goal in data["goals"].items():
        verdict = "met" if goal["met"] else "MISSED"
        lines.append(f"  {label:{width + 4}}{_fmt(goal['value'], '{:.1f}'):>8}  goal {goal['goal']:<7} {verdict}")
    lines += [f"  note: {n}" for n in data.get("notes", [])]
    return "\n".join(lines)
