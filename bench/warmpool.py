"""Create-to-ready with a warm pool: a second appliance started with `SCALEBOX_WARM_POOL=base=4`.

The pool keeps a few `base` sandboxes booted and agent-ready; a create with the
API's defaults takes one. Each round waits until the pool is full again (its
`pool.ready` log events), then times one `POST /v1/sandboxes` (sync: 201 once the
agent answers) and deletes the sandbox. The log's `sandbox.create` events say
which creates the pool served (`warm: true`).

When the appliance refuses the setting, or no pool shows up (no `pool.*` event),
the result says "not available" rather than failing the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.create import CREATE_BODY
from bench.env import BenchAppliance, running_appliance
from bench.stats import summary

POOL_TEMPLATE = "base"
POOL_SIZE = 4
FIRST_FILL_TIMEOUT = 60.0
REFILL_TIMEOUT = 20.0


@dataclass
class WarmResult:
    setting: str
    available: bool = False
    reason: str = ""
    create_s: list[float] = field(default_factory=list)
    hits: int = 0
    refill_timeouts: int = 0
    fill_seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in vars(self).items() if k != "create_s"},
            "create_s": {**summary(self.create_s), "samples": [round(v, 4) for v in self.create_s]},
        }


def _pool_ready(app: BenchAppliance, offset: int) -> int:
    """The pool's size after its last `pool.ready` since offset (0 when none)."""
    ready = [e for e in app.events_since(offset, "pool.ready") if e.get("template") in (POOL_TEMPLATE, None)]
    return int(ready[-1].get("ready", 0)) if ready else 0


def _wait_full(app: BenchAppliance, offset: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _pool_ready(app, offset) < POOL_SIZE:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _rounds(app: BenchAppliance, rounds: int, result: WarmResult) -> None:
    with app.client(timeout=60) as api:
        offset = 0
        for _ in range(rounds):
            if not _wait_full(app, offset, REFILL_TIMEOUT):
                result.refill_timeouts += 1
            mark = app.log_offset()
            t0 = time.perf_counter()
            resp = api.post(f"{app.api_url}/sandboxes", json=CREATE_BODY)
            elapsed = time.perf_counter() - t0
            if resp.status_code != 201:
                raise RuntimeError(f"create answered {resp.status_code}: {resp.text[:300]}")
            sandbox_id = str(resp.json()["data"]["sandbox_id"])
            result.create_s.append(elapsed)
            api.delete(f"{app.api_url}/sandboxes/{sandbox_id}")
            creates = [e for e in app.events_since(mark, "sandbox.create") if e.get("sandbox_id") == sandbox_id]
            result.hits += any(e.get("warm") for e in creates)
            offset = mark  # the refill's pool.ready comes after this create


def run(*, rounds: int, log: Callable[[str], None] = print) -> WarmResult:
    setting = f"{POOL_TEMPLATE}={POOL_SIZE}"
    result = WarmResult(setting=setting)
    log(f"warm pool: starting an appliance with SCALEBOX_WARM_POOL={setting}")
    t0 = time.monotonic()
    try:
        with running_appliance({"SCALEBOX_WARM_POOL": setting}) as app:
            if not _wait_full(app, 0, FIRST_FILL_TIMEOUT):
                seen = app.events_since(0, "pool.ready") or app.events_since(0, "pool.fill_failed")
                result.reason = (
                    f"the pool did not fill within {FIRST_FILL_TIMEOUT:g} s"
                    if seen
                    else "the appliance started no pool (no pool.* events): this version has no warm pool"
                )
                log(f"warm pool: not available ({result.reason})")
                return result
            result.available = True
            result.fill_seconds = time.monotonic() - t0
            log(f"warm pool: full after {result.fill_seconds:.1f} s; {rounds} creates, each on a full pool")
            _rounds(app, rounds, result)
    except RuntimeError as exc:
        if result.available:
            raise
        result.reason = "the appliance refused the setting: " + str(exc).strip().splitlines()[-1][:300]
        log(f"warm pool: not available ({result.reason})")
    return result
