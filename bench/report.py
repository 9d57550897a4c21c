"""The text tables of one run: one per phase, printed and embedded in RESULTS.md."""

from __future__ import annotations

import math
from typing import Any

GW_TARGETS = ["direct", "nginx http", "nginx https", "gateway http", "gateway https"]


def _fmt(value: float | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return spec.format(value)


def _grid(title: str, names: list[str], rows: list[tuple[str, list[str]]], width: int = 30) -> list[str]:
    lines = [title, "  " + " " * width + "".join(f"{n:>15}" for n in names)]
    lines += [f"  {label:{width}}" + "".join(f"{c:>15}" for c in cells) for label, cells in rows]
    return lines


def create_table(data: dict[str, Any]) -> str:
    n = data["appliance_create"]["n"]
    lines = [
        f"create to ready, then delete (n={n} each, interleaved; ms)",
        f"  {'':44}{'p50':>9}{'p99':>9}",
    ]
    for label, key in [
        ("appliance POST /v1/sandboxes (sync)", "appliance_create"),
        ("raw podman create + start + agent answers", "raw_create"),
        ("  of which `podman create` returned", "raw_create_returned"),
        ("  of which `podman start` returned", "raw_start_returned"),
        ("appliance DELETE", "appliance_delete"),
        ("raw podman rm -f -t 0", "raw_delete"),
    ]:
        row = data[key]
        lines.append(f"  {label:44}{_fmt(row['median'] * 1000, '{:.0f}'):>9}{_fmt(row['p99'] * 1000, '{:.0f}'):>9}")
    lines.append(
        f"  {'ratio appliance/raw, create':44}{_fmt(data['ratio_create_median'], '{:.2f}x'):>9}"
        f"{_fmt(data['ratio_create_p99'], '{:.2f}x'):>9}"
    )
    lines.append(f"  {'ratio appliance/raw, delete':44}{_fmt(data['ratio_delete_median'], '{:.2f}x'):>9}")
    if data.get("raw_command"):
        lines.append("  raw: " + " ".join(data["raw_command"]))
    return "\n".join(lines)


def gateway_table(data: dict[str, Any]) -> str:
    """`data` is `GatewayResult.to_json()`."""
    summ = data["summary"]
    names = [n for n in GW_TARGETS if n in data["targets"]]
    lines = [f"gateway vs nginx vs direct (load tool: {data.get('load_tool') or '-'}; medians over rounds)"]
    for conns, rows in summ["load"].items():
        grid = [
            ("req/s", [_fmt(rows.get(n, {}).get("rps"), "{:.0f}") for n in names]),
            ("latency p50 ms", [_fmt(rows.get(n, {}).get("p50_ms"), "{:.2f}") for n in names]),
            ("latency p99 ms", [_fmt(rows.get(n, {}).get("p99_ms"), "{:.2f}") for n in names]),
            ("added p50 ms (vs direct)", [_fmt(rows.get(n, {}).get("added_p50_ms"), "{:.2f}") for n in names]),
            ("added p99 ms (vs direct)", [_fmt(rows.get(n, {}).get("added_p99_ms"), "{:.2f}") for n in names]),
            ("proxy CPU us per request", [_fmt(rows.get(n, {}).get("cpu_us_per_req"), "{:.1f}") for n in names]),
            ("req/s ratio vs nginx", [_fmt(rows.get(n, {}).get("rps_ratio_vs_nginx"), "{:.2f}x") for n in names]),
            ("errors (socket or non-2xx)", [str(rows.get(n, {}).get("errors", "-")) for n in names]),
        ]
        lines += ["", *_grid(f"  keep-alive, {conns} connections", names, grid)]
    for key, what in (
        ("handshakes", "new TLS handshakes/s, full (a fresh session per connection, GET, close)"),
        ("resumed_handshakes", "TLS handshakes/s, resumed (wrk, Connection: close)"),
    ):
        hs = summ.get(key, {})
        if not hs:
            continue
        lines.append("")
        lines.append(f"  {what}: ratio gateway/nginx {_fmt(hs.get('ratio'), '{:.2f}x')}")
        for name in ("nginx https", "gateway https"):
            v = hs.get(name)
            if not isinstance(v, dict):
                continue
            extra = f", client CPU {_fmt(v.get('client_busy'), '{:.2f}')} s/s" if "client_busy" in v else ""
            extra += f", {v['resumed']} resumed" if v.get("resumed") else ""
            extra += f", {v['errors']} errors" if v.get("errors") else ""
            lines.append(
                f"    {name:15}{_fmt(v.get('per_s'), '{:.0f}'):>8}/s   proxy CPU"
                f" {_fmt(v.get('proxy_cpu_us'), '{:.0f}')} us per handshake{extra}"
            )
    seq = summ["sequential"]
    grid = [
        ("keep-alive GET p50 ms", [_fmt(seq.get(n, {}).get("p50_ms"), "{:.3f}") for n in names]),
        ("keep-alive GET p99 ms", [_fmt(seq.get(n, {}).get("p99_ms"), "{:.3f}") for n in names]),
        ("new connection + GET p50 ms", [_fmt(seq.get(n, {}).get("connect_p50_ms"), "{:.3f}") for n in names]),
        ("large download MiB/s", [_fmt(seq.get(n, {}).get("transfer_mib_s"), "{:.0f}") for n in names]),
    ]
    lines += ["", *_grid("  one request at a time (an idle machine)", names, grid)]
    internal = data.get("gateway_internal_ms", {})
    if internal.get("n"):
        lines.append(f"  gateway's own logged time per request (gateway.request ms): median {internal['median']:.3f}")
    lines += [f"  note: {n}" for n in data.get("notes", [])]
    lines += [f"  FAILED: {f}" for f in data.get("failed", [])]
    return "\n".join(lines)


def websocket_table(data: dict[str, Any]) -> str:
    """`data` is `WsResult.to_json()`."""
    summ, plan = data["summary"], data["plan"]
    names = [n for n in GW_TARGETS if n in data["targets"]]
    grid = [
        ("messages/s", [_fmt(summ.get(n, {}).get("msgs_per_s"), "{:.0f}") for n in names]),
        ("ratio vs nginx (paired rounds)", [_fmt(summ.get(n, {}).get("ratio_vs_nginx"), "{:.2f}x") for n in names]),
        ("proxy CPU us per message", [_fmt(summ.get(n, {}).get("proxy_cpu_us_per_msg"), "{:.1f}") for n in names]),
        ("client CPU s per wall s", [_fmt(summ.get(n, {}).get("client_busy"), "{:.2f}") for n in names]),
    ]
    title = (
        f"WebSocket echo ({plan['message_bytes']}-byte binary messages, {plan['connections']} connections x "
        f"{plan['window']} in flight, {plan['rounds']} x {plan['seconds']:g} s per target; medians)"
    )
    lines = _grid(title, names, grid)
    verdict = (
        "the client was the bottleneck (near a core busy): the proxies may be faster than shown"
        if summ.get("client_bound")
        else "the client was not the bottleneck (well under a core busy)"
    )
    lines.append(f"  note: {verdict}")
    lines += [f"  FAILED: {f}" for f in data.get("failed", [])]
    return "\n".join(lines)


def memory_table(data: dict[str, Any]) -> str:
    """`data` is `MemoryResult.to_json()`."""
    summ = data["summary"]
    n = summ["n"]
    lines = [
        f"memory per idle sandbox ({data['created']} of {data['requested']} created, measured {n}; MB = 10^6 bytes)",
        f"  {'cgroup working set (usage - inactive file)':46}{_fmt(summ.get('cgroup_working_set_mb'), '{:.1f}'):>8}",
        f"  {'  of which RSS':46}{_fmt(summ.get('cgroup_rss_mb'), '{:.1f}'):>8}",
        f"  {'conmon PSS (outside the cgroup)':46}{_fmt(summ.get('conmon_pss_mb'), '{:.1f}'):>8}",
        f"  {'per sandbox (working set + conmon)':46}{_fmt(summ.get('mb_per_sandbox'), '{:.1f}'):>8}",
        f"  {'host MemAvailable drop / sandboxes (noisy)':46}{_fmt(summ.get('host_mb_per_sandbox'), '{:.1f}'):>8}",
        f"  creates took {data['create_seconds']:.0f} s, deletes {data['delete_seconds']:.0f} s "
        f"(cgroup {data.get('cgroup') or '-'})",
    ]
    if data.get("failed"):
        lines.append(f"  {len(data['failed'])} creates failed, first: {data['failed'][0]}")
    return "\n".join(lines)


def warm_table(data: dict[str, Any]) -> str:
    """`data` is `WarmResult.to_json()`."""
    if not data["available"]:
        return f"warm pool ({data['setting']}): not available: {data['reason']}"
    c = data["create_s"]
    return "\n".join(
        [
            f"warm pool ({data['setting']}): create to ready, each on a full pool (n={c['n']}; ms)",
            f"  p50 {c['median'] * 1000:.1f}   p99 {c['p99'] * 1000:.1f}   min {c['min'] * 1000:.1f}"
            f"   served by the pool: {data['hits']} of {c['n']}; pool first full after {data['fill_seconds']:.1f} s"
            + (f"; {data['refill_timeouts']} rounds did not see a full pool" if data.get("refill_timeouts") else ""),
        ]
    )


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
    lines += [f"  FAILED: {f}" for f in data.get("failed", [])]
    return "\n".join(lines)


TCP_TARGETS = ["direct tcp", "nginx tcp", "gateway tcp", "direct tls", "nginx tls", "gateway tls"]
TCP_GROUPS = [("tcp", "behind TLS (tcp)"), ("tls", "passthrough (tls)")]


def _added_us(group: dict[str, Any], name: str) -> str:
    """The microseconds the gateway and nginx add over direct in one group, as "gw / nginx"."""
    added = group.get("added_rtt_p50_us", {})
    return f"{_fmt(added.get(f'gateway {name}'), '{:.0f}')} / {_fmt(added.get(f'nginx {name}'), '{:.0f}')}"


def tcp_table(data: dict[str, Any]) -> str:
    """`data` is `TcpResult.to_json()`."""
    summ, plan = data["summary"], data["plan"]
    names = [n for n in TCP_TARGETS if n in data["targets"]]
    per = summ["targets"]

    def cells(key: str, spec: str) -> list[str]:
        return [_fmt(per.get(n, {}).get(key), spec) for n in names]

    size = f"{plan['transfer_mib']} MiB x {plan['transfer_rounds']}"
    msg = f"{plan['message_bytes']}-byte"
    grid = [
        (f"{msg} round trip p50 ms", cells("rtt_p50_ms", "{:.3f}")),
        (f"{msg} round trip p99 ms", cells("rtt_p99_ms", "{:.3f}")),
        ("new connection + echo p50 ms", cells("setup_p50_ms", "{:.2f}")),
        ("new connection + echo p99 ms", cells("setup_p99_ms", "{:.2f}")),
        (f"download MB/s ({size})", cells("download_mb_s", "{:.0f}")),
        (f"upload MB/s ({size})", cells("upload_mb_s", "{:.0f}")),
        ("proxy CPU s per GB moved", cells("proxy_cpu_s_per_gb", "{:.2f}")),
        ("client CPU s per wall s", cells("client_busy", "{:.2f}")),
    ]
    rtts = plan["rtt_blocks"] * plan["rtt_block"]
    title = (
        f"raw TCP behind TLS and TLS passthrough: gateway vs nginx stream vs direct ({rtts} round trips and"
        f" {plan['setup_rounds']} new connections per target; medians; MB = 10^6 bytes)"
    )
    lines = _grid(title, names, grid, width=34)
    ratios = summ.get("ratios", {})
    groups = [(g, label) for g, label in TCP_GROUPS if g in ratios]
    if groups:
        width = 44
        lines += ["", "  gateway / nginx, median of paired rounds (time and CPU: > 1 is worse; MB/s: < 1 is worse)"]
        lines.append(f"  {'':{width}}" + "".join(f"{label:>20}" for _, label in groups))
        for label, key in [
            ("round trip p50", "rtt_p50"),
            ("round trip p99 (over every sample)", "rtt_p99"),
            ("new connection + echo p50", "setup_p50"),
            ("download MB/s", "download"),
            ("upload MB/s", "upload"),
            ("proxy CPU per GB moved", "proxy_cpu_per_gb"),
        ]:
            lines.append(
                f"  {label:{width}}" + "".join(f"{_fmt(ratios[g].get(key), '{:.2f}x'):>20}" for g, _ in groups)
            )
        added = "round trip p50 added over direct, us (gw / nginx)"
        lines.append(f"  {added:{width}}" + "".join(f"{_added_us(ratios[g], g):>20}" for g, _ in groups))
    lines.append("  note: direct tcp is plaintext, so the tcp group's time added over direct includes TLS itself")
    if summ.get("client_bound"):
        bound = ", ".join(summ["client_bound"])
        lines.append(
            f"  note: the client was near a core busy in the transfers of {bound}: MB/s there may be its limit"
        )
    lines += [f"  note: {n}" for n in data.get("notes", [])]
    lines += [f"  FAILED: {f}" for f in data.get("failed", [])]
    return "\n".join(lines)


def egress_table(data: dict[str, Any]) -> str:
    """`data` is `EgressResult.to_json()`."""
    summ, plan = data["summary"], data["plan"]
    width = 44
    title = (
        f"egress from a sandbox: through the egress proxy (allow_out) vs direct (no lists), paired rounds"
        f" ({plan['connect_rounds'] * plan['connect_per_round']} connections, {plan['transfer_rounds']} x"
        f" {plan['transfer_mib']} MiB each way, {plan['echo_rounds'] * plan['echo_per_round']} round trips,"
        f" {plan['dns_rounds'] * plan['dns_per_round']} lookups per sandbox; medians; MB = 10^6 bytes)"
    )
    lines = [title, f"  {'metric':{width}}{'direct':>12}{'proxied':>12}{'ratio':>10}"]
    for row in summ["rows"]:
        spec = "{:.0f}" if "MB/s" in row["label"] else ("{:.2f}" if row["key"].startswith("cpu_") else "{:.3f}")
        lines.append(
            f"  {row['label']:{width}}{_fmt(row['direct'], spec):>12}{_fmt(row['proxied'], spec):>12}"
            f"{_fmt(row['ratio'], '{:.2f}x'):>10}"
        )
    lines.append("  ratio: proxied / direct, the median of per-round ratios (p90, p99: of the two values); time: > 1")
    lines.append("  is worse, MB/s: < 1 is worse; appliance CPU, direct: its background (the proxy is not on its path)")
    lines.append(
        f"  proxy CPU (proxied minus direct): {_fmt(summ.get('proxy_cpu_s_per_gb'), '{:.2f}')} s per GB moved,"
        f" {_fmt(summ.get('proxy_cpu_ms_per_connection'), '{:.2f}')} ms per connection"
    )
    lines.append(
        f"  DNS: a UDP query through the appliance's resolver (from the proxied sandbox) vs the same query from the"
        f" host straight to the upstream: {_fmt(summ.get('dns_resolver_vs_upstream'), '{:.2f}x')}"
        f" (host to upstream p50 {_fmt(summ.get('dns_host_to_upstream_p50_ms'), '{:.3f}')} ms);"
        " both sandboxes ask the resolver"
    )
    lines += [f"  note: {n}" for n in data.get("notes", [])]
    lines += [f"  FAILED: {f}" for f in data.get("failed", [])]
    return "\n".join(lines)
