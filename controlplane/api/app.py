"""The Quart application: /v1 routes, API-key auth, and the one place errors become JSON."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

from quart import Response, g, request
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioRequest
from werkzeug.exceptions import HTTPException

from appliance import log
from controlplane import apikeys
from controlplane.agentclient import AgentError
from controlplane.api import accounts, exec_routes, extras, hooks, projects, schemas, terminal, usage, wake
from controlplane.api import openapi as openapi_routes
from controlplane.api import templates as template_routes
from controlplane.api.envelope import failure, success
from controlplane.api.identity import current_user_id
from controlplane.api.wire import drain_body, json_response, read_json_body
from controlplane.errors import ApiError, NotFound
from controlplane.hooks.notifications import Notifications
from controlplane.hooks.webhooks import Webhooks
from controlplane.lifecycle.service import SandboxService
from controlplane.projects import Projects
from controlplane.records import SandboxRecord
from controlplane.store import SandboxQuery, Store
from controlplane.templateservice import TemplateService
from controlplane.tokens import mint_access_token
from controlplane.usage.meter import Meter
from controlplane.usage.prices import PriceTable
from controlplane.users import Accounts

MAX_BODY = 1 << 20
# The OpenAPI document describes the API and grants nothing: anyone may read it.
PUBLIC_PATHS = frozenset({"/health", "/v1/scalebox-regions", *openapi_routes.PATHS})


@dataclass(frozen=True, kw_only=True)
class ApiSettings:
    domain: str
    public_port: int | None
    secret: bytes
    limits: schemas.HostLimits
    region: str = "local"
    # What usage costs (controlplane/usage/prices.py); all free unless `--prices` names a file.
    prices: PriceTable | None = None


# File uploads through the API: Quart buffers a request body as it arrives, so
# this bounds memory per upload; larger files go to the sandbox domain, which
# streams end to end.
MAX_UPLOAD = 256 << 20
_FILES_PATH = re.compile(r"/v1/sandboxes/[^/]+/files")
# An image archive uploaded as a template (api/templates.py), buffered like a file upload.
_IMPORT_PATH = "/v1/templates/import"


class ApiRequest(TrioRequest):
    """Every body is capped at MAX_BODY, except a file upload's, known from the path before any byte is read."""

    def __init__(self, method: str, scheme: str, path: str, *args: Any, **kwargs: Any) -> None:
        if (method == "PUT" and _FILES_PATH.fullmatch(path)) or (method == "POST" and path == _IMPORT_PATH):
            kwargs["max_content_length"] = MAX_UPLOAD
        super().__init__(method, scheme, path, *args, **kwargs)


def create_app(
    *,
    service: SandboxService,
    store: Store,
    settings: ApiSettings,
    webhooks: Webhooks | None = None,
    notifications: Notifications | None = None,
    meter: Meter | None = None,
) -> QuartTrio:
    """The API. `webhooks` and `notifications` are made here unless given (the appliance
    gives its own, to run their Deliverer); both listen to the service's events."""
    webhooks = webhooks or Webhooks(store.hooks)
    notifications = notifications or Notifications(store.hooks)
    service.events.subscribe(webhooks.on_event)
    service.events.subscribe(notifications.on_event)
    # The appliance gives the meter it runs; made here it records sessions and takes traffic only.
    meter = meter or Meter(service=service, usage=store.usage)
    users = Accounts(store)
    users.ensure_admin()
    projects_service = Projects(store)

    def _project_filter(ref: str | None) -> str | None:
        return None if not ref else projects_service.get(current_user_id(), ref).id

    app = QuartTrio("scalebox-controlplane")
    app.request_class = ApiRequest
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False

    def exposure(rec: SandboxRecord) -> schemas.Exposure:
        return schemas.Exposure(
            domain=settings.domain,
            public_port=settings.public_port,
            access_token=mint_access_token(settings.secret, rec.id),
        )

    def render(rec: SandboxRecord) -> dict[str, Any]:
        return schemas.sandbox_json(rec, exposure(rec), time.time())

    @app.before_request
    async def authenticate() -> None:
        g.request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex[:16]
        g.started = time.monotonic()
        if (
            request.path in PUBLIC_PATHS
            or wake.takes_access_token(request.method, request.path)
            or usage.signs_itself(request.method, request.path)
        ):
            return
        g.api_key = apikeys.authenticate(store, request.headers.get("X-API-KEY"))
        g.user_id = g.api_key.user_id
        # Every route naming a sandbox, in one place: another user's is as if it did not
        # exist (404, never 403, so ids cannot be probed).
        sandbox_id = (request.view_args or {}).get("sandbox_id")
        if sandbox_id is not None:
            rec = store.get_sandbox(sandbox_id)
            if rec is None or rec.owner_id != g.user_id:
                raise NotFound(f"sandbox {sandbox_id[:64]} does not exist", code="sandbox_not_found")

    @app.after_request
    async def log_request(response: Response) -> Response:
        # An early answer must not leave the body unread: see wire.drain_body.
        await drain_body()
        response.headers["X-Request-Id"] = g.get("request_id", "")
        log.event(
            "api.request",
            request_id=g.get("request_id"),
            method=request.method,
            path=request.path,
            status=response.status_code,
            ms=round((time.monotonic() - g.get("started", time.monotonic())) * 1000, 1),
        )
        return response

    @app.errorhandler(ApiError)
    async def api_error(exc: ApiError) -> Response:
        return json_response(failure(exc.error, exc.message, exc.code, g.get("request_id")), exc.status)

    @app.errorhandler(AgentError)
    async def agent_failure(exc: AgentError) -> Response:
        return await api_error(exec_routes.agent_error(exc))

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        name = (exc.name or "error").lower().replace(" ", "_")
        message = {
            404: f"no such endpoint: {request.method} {request.path}",
            405: f"method {request.method} is not allowed on {request.path}",
            413: f"request body is larger than {MAX_BODY} bytes",
        }.get(status, exc.description or name)
        return json_response(failure(name, message, None, g.get("request_id")), status)

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Response:
        log.event("api.crash", request_id=g.get("request_id"), error=repr(exc))
        return json_response(
            failure(
                "internal_error", "the appliance failed to handle this request; see its log", None, g.get("request_id")
            ),
            500,
        )

    @app.get("/health")
    async def health() -> Response:
        return json_response(success({"status": "ok"}))

    @app.get("/v1/scalebox-regions")
    async def regions() -> Response:
        return json_response(success({"scalebox_regions": [{"id": settings.region, "name": "Self-hosted appliance"}]}))

    @app.post("/v1/sandboxes")
    async def create_sandbox() -> Response:
        req = schemas.parse_create(await read_json_body(), settings.limits)
        owner = current_user_id()
        req = replace(req, owner_id=owner, project_id=projects_service.resolve(owner, req.project_id).id)
        rec = await service.create(req)
        return json_response(
            success(render(rec), "sandbox created" if not req.is_async else "sandbox creation started"), 201
        )

    @app.get("/v1/sandboxes")
    async def list_sandboxes() -> Response:
        args = request.args.to_dict()
        page = schemas.parse_page(args)
        query = SandboxQuery(
            states=schemas.parse_states(args.get("status")),
            metadata=schemas.parse_metadata_filter(args.get("metadata")),
            owner_id=current_user_id(),
            project_id=_project_filter(args.get("project_id")),
            limit=page.limit,
            offset=page.offset,
        )
        records, total = service.list(query)
        data = {"sandboxes": [render(r) for r in records], "pagination": schemas.pagination_json(page, total)}
        return json_response(success(data))

    @app.get("/v1/sandboxes/<sandbox_id>")
    async def get_sandbox(sandbox_id: str) -> Response:
        data = render(service.get(sandbox_id))
        # The Python SDK's get_info reads `metadata` from the envelope, not from
        # `data`; mirroring it there keeps that SDK working unmodified.
        return json_response({**success(data), "metadata": data["metadata"]})

    @app.delete("/v1/sandboxes/<sandbox_id>")
    async def delete_sandbox(sandbox_id: str) -> Response:
        rec = await service.delete(sandbox_id)
        data = {"sandbox_id": rec.id, "status": rec.state.value, "note": "container removed"}
        return json_response(success(data, "sandbox deleted"), 202)

    @app.get("/v1/sandboxes/<sandbox_id>/status")
    async def sandbox_status(sandbox_id: str) -> Response:
        return json_response(success(schemas.status_json(service.get(sandbox_id))))

    @app.route("/v1/sandboxes/<sandbox_id>/timeout", methods=["POST", "PUT"])
    async def set_timeout(sandbox_id: str) -> Response:
        seconds = schemas.parse_timeout(await read_json_body())
        rec = await service.set_timeout(sandbox_id, seconds)
        now = time.time()
        data = {
            "timeout": rec.timeout,
            "timeout_at": schemas.iso(rec.timeout_at),
            "used_lifetime": int(now - (rec.started_at or now)),
            "remaining_time": max(0, int((rec.timeout_at or now) - now)),
        }
        return json_response(success(data, "timeout updated"))

    @app.post("/v1/sandboxes/<sandbox_id>/pause")
    async def pause(sandbox_id: str) -> Response:
        schemas.parse_is_async(await read_json_body())
        rec = await service.pause(sandbox_id)
        return json_response(success(render(rec), "sandbox paused"))

    @app.post("/v1/sandboxes/<sandbox_id>/resume")
    async def resume(sandbox_id: str) -> Response:
        payload = await read_json_body()
        schemas.parse_is_async(payload)
        rec = await service.resume(sandbox_id, schemas.parse_optional_timeout(payload))
        return json_response(success(render(rec), "sandbox resumed"))

    @app.post("/v1/sandboxes/<sandbox_id>/connect")
    async def connect(sandbox_id: str) -> Response:
        rec = await service.resume(sandbox_id, schemas.parse_optional_timeout(await read_json_body()))
        return json_response(success(render(rec), "sandbox connected"))

    @app.get("/v1/sandboxes/<sandbox_id>/metrics")
    async def metrics(sandbox_id: str) -> Response:
        start = schemas.parse_time(request.args.get("start"), "start")
        end = schemas.parse_time(request.args.get("end"), "end")
        rec, stats = await service.stats(sandbox_id)
        now = time.time()
        items = []
        # Podman gives a point-in-time sample; no history is kept yet, so the
        # current sample is returned when it falls inside the asked window.
        if stats is not None and (start is None or start <= now) and (end is None or now <= end + 1):
            items.append(
                {
                    "timestamp": schemas.iso(now),
                    "cpu_count": rec.cpu_count,
                    "cpu_used_pct": round(stats.cpu_used_pct, 2),
                    "mem_total": stats.mem_total,
                    "mem_used": stats.mem_used,
                    "disk_total": rec.storage_gb * (1 << 30),
                    "disk_used": stats.disk_used,
                }
            )
        return json_response(success({"sandbox_id": rec.id, "metrics": items}))

    accounts.register(app, accounts=users)
    hooks.register(app, webhooks=webhooks, notifications=notifications)
    projects.register(app, projects=projects_service, service=service, render=render)
    exec_routes.register(app, service=service, secret=settings.secret)
    wake.register(app, service=service, secret=settings.secret)
    terminal.register(app, service=service, store=store, secret=settings.secret)
    extras.register(
        app, service=service, domain=settings.domain, public_port=settings.public_port, secret=settings.secret
    )
    template_routes.register(
        app, templates=TemplateService(store=store, sandboxes=service), store=store, limits=settings.limits
    )
    usage.register(app, store=store, meter=meter, prices=settings.prices or PriceTable(), secret=settings.secret)
    openapi_routes.register(app, url=openapi_routes.api_url(settings.domain, settings.public_port))
    return app
