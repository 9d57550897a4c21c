"""Usage, billing and sandbox statistics: what the caller's sandboxes used and cost.

    GET  /v1/usage?start=&end=             totals and per sandbox (start/end: epoch ms or ISO 8601)
    GET  /v1/usage/sessions?sandbox_id=&page=&limit=   when sandboxes ran, newest first
    GET  /v1/sandboxes/{id}/usage?start=&end=          one sandbox's usage and cost
    GET  /v1/sandboxes/stats               counts, cost, average utilisation, uptime
    GET  /v1/billing/current               this calendar month (UTC) so far, by item
    GET  /v1/billing/invoices              every month with usage, newest first
    GET  /v1/billing/invoices/{YYYY-MM}    one month's invoice
    POST /v1/internal/traffic              a gateway process's byte counts (signed, no API key)

Each user sees only their own: the buckets and sessions are selected by owner, and a
sandbox of someone else's is 404 (app.py's check for `<sandbox_id>` routes; here for
the `sandbox_id` query parameter). Usage is kept per hour, so start and end are
rounded to the hour that holds them.
"""

from __future__ import annotations

import json
import time
from typing import Any

from quart import Response, request
from quart_trio import QuartTrio

from controlplane.api.envelope import success
from controlplane.api.identity import current_user_id
from controlplane.api.schemas import iso, pagination_json, parse_page, parse_time
from controlplane.api.wire import json_response
from controlplane.errors import BadRequest, NotFound, Unauthorized
from controlplane.lifecycle.states import State
from controlplane.store import Store
from controlplane.tokens import verify_report
from controlplane.usage.calc import Usage, parse_period, period_bounds, period_of, total
from controlplane.usage.invoices import FINAL, invoice, status_of, usage_json
from controlplane.usage.meter import Meter
from controlplane.usage.prices import PriceTable, cost, line_items
from controlplane.usage.store import Session

TRAFFIC_PATH = "/v1/internal/traffic"
# A traffic report older (or newer) than this is refused; its nonce is remembered as long.
REPORT_MAX_AGE = 120.0
_MAX_REPORTED = 100_000
_MAX_BYTES = 1 << 62


def signs_itself(method: str, path: str) -> bool:
    """Whether a request is a gateway's report, which carries a signature instead of an API key."""
    return method == "POST" and path == TRAFFIC_PATH


def _window(args: dict[str, str]) -> tuple[float | None, float | None]:
    start = parse_time(args.get("start"), "start")
    end = parse_time(args.get("end"), "end")
    if start is not None and end is not None and start >= end:
        raise BadRequest("start must be before end", code="invalid_query")
    return start, end


def _session_json(s: Session, now: float) -> dict[str, Any]:
    return {
        "session_id": s.id,
        "sandbox_id": s.sandbox_id,
        "started_at": iso(s.started_at),
        "ended_at": iso(s.ended_at),
        "duration_seconds": round((s.ended_at if s.ended_at is not None else now) - s.started_at, 3),
        "running": s.ended_at is None,
        "end_event": s.end_event,
        "cpu_count": s.cpu_count,
        "memory_mb": s.memory_mb,
    }


def _priced(usage: Usage, prices: PriceTable) -> dict[str, Any]:
    return {
        "usage": usage_json(usage),
        "items": [i.to_json() for i in line_items(usage, prices)],
        "cost": cost(usage, prices),
        "currency": prices.currency,
    }


def parse_traffic(payload: Any) -> dict[str, tuple[int, int]]:
    """`{"traffic": {sandbox_id: [bytes_in, bytes_out]}}`; BadRequest says what is wrong."""
    traffic = payload.get("traffic") if isinstance(payload, dict) else None
    if not isinstance(traffic, dict) or len(traffic) > _MAX_REPORTED:
        raise BadRequest("a traffic report is {traffic: {sandbox_id: [bytes_in, bytes_out]}}", code="invalid_field")
    out: dict[str, tuple[int, int]] = {}
    for sandbox_id, pair in traffic.items():
        ok = isinstance(pair, list) and len(pair) == 2
        if not ok or not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < _MAX_BYTES for n in pair):
            raise BadRequest(f"traffic of {sandbox_id[:64]!r} must be [bytes_in, bytes_out]", code="invalid_field")
        out[sandbox_id] = (pair[0], pair[1])
    return out


def register(app: QuartTrio, *, store: Store, meter: Meter, prices: PriceTable, secret: bytes) -> None:
    usage = store.usage
    # Nonces of reports accepted within REPORT_MAX_AGE: a replayed report is refused.
    seen: dict[str, float] = {}

    def owned(sandbox_id: str) -> str:
        rec = store.get_sandbox(sandbox_id)
        if rec is None or rec.owner_id != current_user_id():
            raise NotFound(f"sandbox {sandbox_id[:64]} does not exist", code="sandbox_not_found")
        return rec.id

    def month_invoice(owner: str, period: str, now: float) -> dict[str, Any]:
        kept = usage.final_invoice(owner, period)
        if kept is not None:
            return kept
        start, end = period_bounds(period)
        amount = total(list(usage.per_sandbox(owner, start, end).values()))
        status = status_of(period, now)
        body = invoice(owner_id=owner, period=period, usage=amount, prices=prices, status=status, iso=iso)
        return usage.finalize_invoice(owner, period, body, now) if status == FINAL else body

    @app.get("/v1/usage")
    async def usage_summary() -> Response:
        start, end = _window(request.args.to_dict())
        per = usage.per_sandbox(current_user_id(), start, end)
        sandboxes = [{"sandbox_id": sid, **_priced(u, prices)} for sid, u in per.items()]
        data = {"start": iso(start), "end": iso(end), **_priced(total(list(per.values())), prices)}
        return json_response(success({**data, "sandboxes": sandboxes}))

    @app.get("/v1/usage/sessions")
    async def usage_sessions() -> Response:
        args = request.args.to_dict()
        page = parse_page(args)
        sandbox_id = owned(args["sandbox_id"]) if args.get("sandbox_id") else None
        found, count = usage.sessions(current_user_id(), sandbox_id=sandbox_id, limit=page.limit, offset=page.offset)
        now = time.time()
        data = {"sessions": [_session_json(s, now) for s in found], "pagination": pagination_json(page, count)}
        return json_response(success(data))

    @app.get("/v1/sandboxes/<sandbox_id>/usage")
    async def sandbox_usage(sandbox_id: str) -> Response:
        start, end = _window(request.args.to_dict())
        amount = usage.per_sandbox(current_user_id(), start, end, sandbox_id=sandbox_id).get(sandbox_id, Usage())
        _, sessions = usage.sessions(current_user_id(), sandbox_id=sandbox_id, limit=1)
        data = {"sandbox_id": sandbox_id, "start": iso(start), "end": iso(end), "sessions": sessions}
        return json_response(success({**data, **_priced(amount, prices)}))

    @app.get("/v1/sandboxes/stats")
    async def sandbox_stats() -> Response:
        owner, now = current_user_id(), time.time()
        everything = total(list(usage.per_sandbox(owner).values()))
        capacity = usage.capacity(owner, now)

        def percent(used: float, of: float) -> float:
            return round(100 * used / of, 2) if of > 0 else 0.0

        data = {
            "total_sandboxes": store.count_sandboxes_of(owner, list(State)),
            "running_sandboxes": store.count_sandboxes_of(owner, [State.RUNNING]),
            "terminated_sandboxes": store.count_sandboxes_of(owner, [State.TERMINATED]),
            "failed_sandboxes": store.count_sandboxes_of(owner, [State.FAILED]),
            "total_cost": cost(everything, prices),
            "currency": prices.currency,
            "avg_cpu_usage": percent(everything.cpu_seconds, capacity.cpu_seconds),
            "avg_memory_usage": percent(everything.memory_gb_seconds, capacity.memory_gb_seconds),
            "total_uptime_hours": round(capacity.uptime_seconds / 3600, 4),
        }
        return json_response(success(data))

    @app.get("/v1/billing/current")
    async def billing_current() -> Response:
        now = time.time()
        return json_response(success(month_invoice(current_user_id(), period_of(now), now)))

    @app.get("/v1/billing/invoices")
    async def billing_invoices() -> Response:
        owner, now = current_user_id(), time.time()
        periods = sorted({*usage.per_period(owner), period_of(now)}, reverse=True)
        return json_response(success({"invoices": [month_invoice(owner, p, now) for p in periods]}))

    @app.get("/v1/billing/invoices/<period>")
    async def billing_invoice(period: str) -> Response:
        owner, now = current_user_id(), time.time()
        try:
            parse_period(period)
        except ValueError as exc:
            raise BadRequest(f"{exc}; ask for a month such as {period_of(now)}", code="invalid_period") from None
        if period != period_of(now) and period not in usage.per_period(owner):
            raise NotFound(f"no invoice for {period}: no usage was metered that month", code="invoice_not_found")
        return json_response(success(month_invoice(owner, period, now)))

    @app.post(TRAFFIC_PATH)
    async def report_traffic() -> Response:
        raw: bytes = await request.get_data(cache=False, as_text=False, parse_form_data=False)
        now = time.time()
        nonce = verify_report(secret, raw, request.headers.get("X-Scalebox-Signature"), now=now, max_age=REPORT_MAX_AGE)
        for old in [n for n, at in seen.items() if at < now - 2 * REPORT_MAX_AGE]:
            del seen[old]
        if nonce is None or nonce in seen:
            raise Unauthorized("a traffic report needs a fresh signature by the appliance", code="invalid_signature")
        seen[nonce] = now
        try:
            payload = json.loads(raw)
        except ValueError:
            raise BadRequest("a traffic report is JSON", code="invalid_json") from None
        counts = parse_traffic(payload)
        meter.add_traffic(counts)
        return json_response(success({"sandboxes": len(counts)}, "traffic recorded"))
