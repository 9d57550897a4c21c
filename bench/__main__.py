"""`python -m bench [--quick] [--only PHASE]... [--json OUT] [--results RESULTS.md]`

Starts a real appliance on a temporary data dir, runs the benchmarks side by side
with their baselines (raw Podman, nginx, direct), prints the tables and issue 6's
targets, and removes everything it started: sandboxes, raw containers, nginx, the
appliances. Phases: create, gateway, websocket, tcp, agent, memory (on one
appliance), then warm (a second appliance with a warm pool) and egress (a third, with
an egress proxy and an "internet" of its own). A phase that fails
is reported and the others still run; the exit code is then 1.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench import agent, create, egress, gateway, machine, memory, procs, report, results, tcp, warmpool, wsecho
from bench.env import running_appliance
from bench.rig import upstream_rig
from bench.tcprig import tcp_rig

PHASES = ["create", "gateway", "websocket", "tcp", "agent", "memory", "warm", "egress"]


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _clean(value: Any) -> Any:
    """JSON has no NaN: make them null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


class Run:
    """The results of one run, phase by phase, and the failures."""

    def __init__(self, quick: bool) -> None:
        self.started = time.monotonic()
        self.out: dict[str, Any] = {"quick": quick, "phase_seconds": {}, "errors": {}, "setup": {}}
        self.tables: list[str] = []

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        except Exception as exc:  # one phase failing must not lose the others' numbers
            _log(f"{name} failed: {exc!r}")
            traceback.print_exc(file=sys.stderr)
            self.out["errors"][name] = repr(exc)[:500]
            self.tables.append(f"{name}: FAILED: {exc!r}"[:500])
        finally:
            self.out["phase_seconds"][name] = round(time.monotonic() - t0, 1)

    def add(self, key: str, data: dict[str, Any], table: Callable[[dict[str, Any]], str]) -> None:
        self.out[key] = data
        self.tables.append(table(data))
        if data.get("failed"):  # a part of the phase failed; its other numbers stand
            self.out["errors"][key] = "; ".join(data["failed"])[:500]


def _appliance_phases(run: Run, wanted: set[str], quick: bool) -> None:
    with running_appliance() as app:
        assert app.process is not None
        run.out["setup"]["gateway_processes"] = len(procs.same_program(app.process.pid))
        _log(f"appliance up on port {app.port} ({time.monotonic() - run.started:.1f} s)")
        if "create" in wanted:
            with run.phase("create"):
                run.add("create", create.run(app, rounds=4 if quick else 30, log=_log).to_json(), report.create_table)
        if wanted & {"gateway", "websocket"}:
            with run.phase("rig"), upstream_rig(app, log=_log) as rig:
                if "gateway" in wanted:
                    with run.phase("gateway"):
                        plan = gateway.GatewayPlan.quick() if quick else gateway.GatewayPlan()
                        run.add("gateway", gateway.run(rig, plan, log=_log).to_json(), report.gateway_table)
                if "websocket" in wanted:
                    with run.phase("websocket"):
                        wplan = wsecho.WsPlan.quick() if quick else wsecho.WsPlan()
                        run.add("websocket", wsecho.run(rig, wplan, log=_log).to_json(), report.websocket_table)
        if "tcp" in wanted:
            with run.phase("tcp"), tcp_rig(app, log=_log) as trig:
                tplan = tcp.TcpPlan.quick() if quick else tcp.TcpPlan()
                run.add("tcp", tcp.run(trig, tplan, log=_log).to_json(), report.tcp_table)
        if "agent" in wanted:
            with run.phase("agent"):
                aplan = agent.AgentPlan.quick() if quick else agent.AgentPlan()
                run.add("agent", agent.run(app, aplan, log=_log).to_json(), report.agent_table)
        if "memory" in wanted:
            with run.phase("memory"):
                mplan = memory.MemoryPlan.quick() if quick else memory.MemoryPlan()
                run.add("memory", memory.run(app, mplan, log=_log).to_json(), report.memory_table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[1])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, 10 sandboxes (a smoke run: 1-2 min)")
    parser.add_argument("--only", choices=PHASES, action="append", help="run this phase (repeatable)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    parser.add_argument("--results", type=Path, metavar="MD", help="write the Markdown report (bench/RESULTS.md)")
    args = parser.parse_args(argv)
    wanted = set(args.only or PHASES)

    run = Run(args.quick)
    if wanted & {"create", "gateway", "websocket", "tcp", "agent", "memory"}:
        _log("starting an appliance")
        with run.phase("appliance"):
            _appliance_phases(run, wanted, args.quick)
    if "warm" in wanted:
        with run.phase("warm"):
            run.add("warm_pool", warmpool.run(rounds=5 if args.quick else 20, log=_log).to_json(), report.warm_table)
    if "egress" in wanted:
        with run.phase("egress"):
            eplan = egress.EgressPlan.quick() if args.quick else egress.EgressPlan()
            run.add("egress", egress.run(eplan, log=_log).to_json(), report.egress_table)
    run.out["seconds"] = round(time.monotonic() - run.started, 1)

    headline = results.markdown_table(results.rows(run.out))
    print()
    print("\n\n".join(run.tables))
    print()
    print(headline)
    print(f"\n(whole run {run.out['seconds']} s; phases: {run.out['phase_seconds']})")
    if args.json:
        args.json.write_text(json.dumps(_clean(run.out), indent=2) + "\n")
        _log(f"wrote {args.json}")
    if args.results:
        command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
        date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        text = results.markdown(run.out, machine=machine.describe(), date=date, command=command.strip(),
                                tables=run.tables)  # fmt: skip
        args.results.write_text(text)
        _log(f"wrote {args.results}")
    return 1 if run.out["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
