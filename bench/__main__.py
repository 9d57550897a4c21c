"""`python -m bench [--quick] [--only create|gateway|agent] [--json out.json]`

Starts a real appliance on a temporary data dir, runs the benchmarks side by side
with their baselines (raw Podman, nginx, direct), prints a table, and removes
everything it started: sandboxes, raw containers, nginx, the appliance.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from bench import agent, create, gateway, report
from bench.env import running_appliance


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _clean(value: Any) -> Any:
    """JSON has no NaN: make them null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[1])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, smaller transfers (about 40 s, not 2 min)")
    parser.add_argument("--only", choices=["create", "gateway", "agent"], help="run one benchmark")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    args = parser.parse_args(argv)

    started = time.monotonic()
    out: dict[str, Any] = {"quick": args.quick}
    tables: list[str] = []
    _log("starting an appliance")
    with running_appliance() as app:
        _log(f"appliance up on port {app.port} ({time.monotonic() - started:.1f} s)")
        if args.only in (None, "create"):
            res = create.run(app, rounds=3 if args.quick else 10, log=_log).to_json()
            out["create"] = res
            tables.append(report.create_table(res))
        if args.only in (None, "gateway"):
            plan = gateway.GatewayPlan.quick() if args.quick else gateway.GatewayPlan()
            gres = gateway.run(app, plan, log=_log)
            out["gateway"] = {**gres.to_json(), "headline": gateway.headline(gres), "ratios": report.ratios(gres)}
            tables.append(report.gateway_table(gres))
        if args.only in (None, "agent"):
            aplan = agent.AgentPlan.quick() if args.quick else agent.AgentPlan()
            ares = agent.run(app, aplan, log=_log).to_json()
            out["agent"] = ares
            tables.append(report.agent_table(ares))
    out["seconds"] = round(time.monotonic() - started, 1)
    print()
    print("\n\n".join(tables))
    print(f"\n(whole run {out['seconds']} s)")
    if args.json:
        args.json.write_text(json.dumps(_clean(out), indent=2) + "\n")
        _log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
