"""The headline: issue 6's targets, each with its measured value, baseline and ratio; and RESULTS.md.

`rows(out)` turns one run's results (the JSON of `python -m bench`) into table
rows; a phase that did not run makes its rows "not measured". Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class Row:
    metric: str
    ours: str
    baseline: str
    ratio: str
    target: str
    met: str  # yes, no, not measured, or "-" (no target)


def _num(value: Any) -> float | None:
    if isinstance(value, int | float) and not (isinstance(value, float) and math.isnan(value)):
        return float(value)
    return None


def _fmt(value: Any, spec: str) -> str:
    v = _num(value)
    return "-" if v is None else spec.format(v)


def _get(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _ratio(a: Any, b: Any) -> float | None:
    x, y = _num(a), _num(b)
    return x / y if x is not None and y not in (None, 0.0) else None


def _verdict(value: Any, ok: Callable[[float], bool]) -> str:
    v = _num(value)
    if v is None:
        return NOT_MEASURED
    return "yes" if ok(v) else "no"


RPS, MS, MS2, MBS, RATIO = "{:,.0f}", "{:.1f} ms", "{:.2f} ms", "{:,.0f} MB/s", "{:.2f}x"


def _http_rows(gw: dict[str, Any] | None) -> list[Row]:
    out = []
    load = _get(gw, "summary", "load") or {}
    for conns in ("64", "256"):
        rows = load.get(conns, {})
        ours, theirs = rows.get("gateway http", {}), rows.get("nginx http", {})
        ratio = ours.get("rps_ratio_vs_nginx")
        out.append(
            Row(f"HTTP keep-alive req/s, {conns} connections (vs nginx)", _fmt(ours.get("rps"), RPS),
                _fmt(theirs.get("rps"), RPS), _fmt(ratio, RATIO), ">= 0.5x", _verdict(ratio, lambda r: r >= 0.5))
        )  # fmt: skip
    for conns in ("64", "256"):
        rows = load.get(conns, {})
        ours, theirs = rows.get("gateway http", {}), rows.get("nginx http", {})
        for pct in ("p50", "p99"):
            key = f"added_{pct}_ms"
            target = "<= 5 ms" if (conns, pct) == ("64", "p99") else "-"
            met = _verdict(ours.get(key), lambda v: v <= 5.0) if target != "-" else "-"
            out.append(
                Row(f"HTTP added {pct} latency over direct, {conns} connections (nginx's)", _fmt(ours.get(key), MS),
                    _fmt(theirs.get(key), MS), "-", target, met)
            )  # fmt: skip
    for conns in ("64", "256"):
        rows = load.get(conns, {})
        ours, theirs = rows.get("gateway https", {}), rows.get("nginx https", {})
        out.append(
            Row(f"TLS keep-alive req/s, {conns} connections (vs nginx https)", _fmt(ours.get("rps"), RPS),
                _fmt(theirs.get("rps"), RPS), _fmt(ours.get("rps_ratio_vs_nginx"), RATIO), "-", "-")
        )  # fmt: skip
    hs = _get(gw, "summary", "handshakes") or {}
    ratio = hs.get("ratio")
    out.append(
        Row("new TLS handshakes/s, full (vs nginx)", _fmt(_get(hs, "gateway https", "per_s"), RPS),
            _fmt(_get(hs, "nginx https", "per_s"), RPS), _fmt(ratio, RATIO), ">= 0.6x",
            _verdict(ratio, lambda r: r >= 0.6))
    )  # fmt: skip
    ours, theirs = _get(hs, "gateway https", "proxy_cpu_us"), _get(hs, "nginx https", "proxy_cpu_us")
    out.append(
        Row("proxy CPU per full TLS handshake (vs nginx; lower is better)", _fmt(ours, "{:,.0f} us"),
            _fmt(theirs, "{:,.0f} us"), _fmt(_ratio(ours, theirs), RATIO), "-", "-")
    )  # fmt: skip
    hs = _get(gw, "summary", "resumed_handshakes") or {}
    out.append(
        Row("TLS handshakes/s, resumed (wrk, Connection: close; vs nginx)",
            _fmt(_get(hs, "gateway https", "per_s"), RPS), _fmt(_get(hs, "nginx https", "per_s"), RPS),
            _fmt(hs.get("ratio"), RATIO), "-", "-")
    )  # fmt: skip
    return out


def _tcp_rows(tcp: dict[str, Any] | None) -> list[Row]:
    """Issue 6's raw TCP target (behind TLS, each way), then passthrough and the per-message costs."""
    per = _get(tcp, "summary", "targets") or {}
    ratios = _get(tcp, "summary", "ratios") or {}
    mib = _get(tcp, "plan", "transfer_mib")
    size = f" {mib} MiB" if mib else ""
    out = []
    for group, what, target in (("tcp", "raw TCP throughput behind TLS", ">= 0.9x"),
                                ("tls", "TLS passthrough throughput", "-")):  # fmt: skip
        ours, theirs = per.get(f"gateway {group}", {}), per.get(f"nginx {group}", {})
        for way in ("download", "upload"):
            ratio = _get(ratios, group, way)
            met = _verdict(ratio, lambda r: r >= 0.9) if target != "-" else "-"
            out.append(
                Row(f"{what}, {way}{size} (vs nginx stream)", _fmt(ours.get(f"{way}_mb_s"), MBS),
                    _fmt(theirs.get(f"{way}_mb_s"), MBS), _fmt(ratio, RATIO), target, met)
            )  # fmt: skip
    for group, what in (("tcp", "TCP behind TLS"), ("tls", "TLS passthrough")):
        ours, theirs = per.get(f"gateway {group}", {}), per.get(f"nginx {group}", {})
        for label, key, ratio_key in (("echo round trip p50", "rtt_p50_ms", "rtt_p50"),
                                      ("new connection + first echo p50", "setup_p50_ms", "setup_p50")):  # fmt: skip
            out.append(
                Row(f"{what} {label} (vs nginx stream)", _fmt(ours.get(key), MS2), _fmt(theirs.get(key), MS2),
                    _fmt(_get(ratios, group, ratio_key), RATIO), "-", "-")
            )  # fmt: skip
    return out


def _ws_rows(ws: dict[str, Any] | None) -> list[Row]:
    summ = _get(ws, "summary") or {}
    out = []
    for ours, theirs, label in (("gateway http", "nginx http", "ws"), ("gateway https", "nginx https", "wss")):
        out.append(
            Row(f"WebSocket echo messages/s, {label} (vs nginx)", _fmt(_get(summ, ours, "msgs_per_s"), RPS),
                _fmt(_get(summ, theirs, "msgs_per_s"), RPS), _fmt(_get(summ, ours, "ratio_vs_nginx"), RATIO), "-",
                "-")
        )  # fmt: skip
    return out


def _ms(seconds: Any) -> float | None:
    v = _num(seconds)
    return None if v is None else v * 1000


def _create_rows(create: dict[str, Any] | None, warm: dict[str, Any] | None) -> list[Row]:
    p50, raw50 = _ms(_get(create, "appliance_create", "median")), _ms(_get(create, "raw_create", "median"))
    p99, raw99 = _ms(_get(create, "appliance_create", "p99")), _ms(_get(create, "raw_create", "p99"))
    ratio50, ms = _ratio(p50, raw50), "{:.0f} ms"
    out = [
        Row("sandbox create-to-ready p50 (vs podman create+start)", _fmt(p50, ms), _fmt(raw50, ms),
            _fmt(ratio50, RATIO), "<= 1.3x", _verdict(ratio50, lambda r: r <= 1.3)),
        Row("sandbox create-to-ready p50, absolute", _fmt(p50, ms), "-", "-", "<= 150 ms",
            _verdict(p50, lambda v: v <= 150)),
        Row("sandbox create-to-ready p99 (vs podman create+start)", _fmt(p99, ms), _fmt(raw99, ms),
            _fmt(_ratio(p99, raw99), RATIO), "-", "-"),
    ]  # fmt: skip
    setting = _get(warm, "setting") or "base=4"
    label = f"sandbox create-to-ready p50 with a warm pool ({setting}; vs without)"
    if warm is None:
        out.append(Row(label, NOT_MEASURED, "-", "-", "<= 30 ms", NOT_MEASURED))
    elif not warm.get("available"):
        out.append(Row(label, "warm pool: not available", "-", "-", "<= 30 ms", NOT_MEASURED))
    else:
        w50 = _ms(_get(warm, "create_s", "median"))
        out.append(
            Row(label, _fmt(w50, "{:.1f} ms"), _fmt(p50, ms), _fmt(_ratio(w50, p50), RATIO), "<= 30 ms",
                _verdict(w50, lambda v: v <= 30))
        )  # fmt: skip
    return out


def _agent_rows(agent: dict[str, Any] | None) -> list[Row]:
    cmds = _get(agent, "headline", "commands") or {}
    out = []
    for pct in ("p50", "p99"):
        ours, theirs = _get(cmds, "sdk gateway", f"{pct}_ms"), _get(cmds, "sdk direct", f"{pct}_ms")
        out.append(
            Row(f'commands.run("true") round trip {pct} (vs the same SDK without the gateway)', _fmt(ours, MS),
                _fmt(theirs, MS), _fmt(_ratio(ours, theirs), RATIO), "-", "-")
        )  # fmt: skip
    return out


def _memory_rows(memory: dict[str, Any] | None) -> list[Row]:
    summ = _get(memory, "summary") or {}
    n = summ.get("n") or (_get(memory, "requested") or 100)
    value = summ.get("mb_per_sandbox")
    return [
        Row(f"memory per idle sandbox, {n} idle (cgroup working set + conmon)", _fmt(value, "{:.1f} MB"), "-", "-",
            "<= 30 MB", _verdict(value, lambda v: v <= 30))
    ]  # fmt: skip


def rows(out: dict[str, Any]) -> list[Row]:
    return [
        *_http_rows(out.get("gateway")),
        *_tcp_rows(out.get("tcp")),
        *_ws_rows(out.get("websocket")),
        *_create_rows(out.get("create"), out.get("warm_pool")),
        *_agent_rows(out.get("agent")),
        *_memory_rows(out.get("memory")),
    ]


def markdown_table(table: list[Row]) -> str:
    lines = ["| metric | ours | baseline | ratio | target | met? |", "|---|---:|---:|---:|---|---|"]
    lines += [f"| {r.metric} | {r.ours} | {r.baseline} | {r.ratio} | {r.target} | {r.met} |" for r in table]
    return "\n".join(lines)


READING = """\
Ratios are ours / baseline, from the same run; req/s and messages/s ratios are the
median of per-round ratios (targets rotated round by round). "Added" latency is a
proxy's wrk percentile minus the direct upstream's in the same round. Baselines:
nginx (`worker_processes auto`, keep-alive upstream, same certificate) in front of
the same in-sandbox upstream; for raw TCP, nginx's stream module (TLS ended with the
same certificate, or passed through by `ssl_preread` routing on the SNI) in front of
one in-sandbox echo/bulk service; raw `podman create` + `podman start` of the same image,
command and mounts until the same agent answers `/health`. "New" TLS handshakes are
full ones (a client that never resumes a session: wrk with `Connection: close`
resumes, so its numbers are the "resumed" row). The load generators share the 2
cores with the proxies: see the details for their CPU use."""


def markdown(out: dict[str, Any], *, machine: dict[str, str], date: str, command: str, tables: list[str]) -> str:
    """The whole RESULTS.md."""
    setup = out.get("setup", {})
    facts = [
        f"- date: {date}",
        f"- machine: {machine.get('machine', '-')}; {machine.get('kernel', '-')}",
        f"- command: `{command}`" + (" (quick: fewer rounds)" if out.get("quick") else ""),
        f"- code: commit {machine.get('commit', '-')}",
        f"- tools: nginx {machine.get('nginx', '-')}, {machine.get('wrk', '-')}, {machine.get('podman', '-')},"
        f" Python {machine.get('python', '-')}",
        f"- appliance: {setup.get('gateway_processes', '-')} gateway process(es)",
        f"- whole run: {out.get('seconds', '-')} s ("
        + ", ".join(f"{k} {v} s" for k, v in out.get("phase_seconds", {}).items() if k != "appliance")
        + ")",
    ]
    errors = out.get("errors") or {}
    if errors:
        facts.append("- failed phases: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))
    parts = [
        "# Benchmark results",
        "Generated by `make bench` (`python -m bench --results bench/RESULTS.md`); do not edit by hand.",
        "\n".join(facts),
        "## Targets (issue 6)",
        markdown_table(rows(out)),
        READING,
        "## Details",
        *(f"```text\n{t}\n```" for t in tables),
    ]
    return "\n\n".join(parts) + "\n"
