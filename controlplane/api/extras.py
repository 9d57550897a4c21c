"""Sandbox ports, container logs and the template catalogue.

    GET    /v1/templates                       the templates this appliance can start
    GET    /v1/templates/{id}
    GET    /v1/sandboxes/{id}/ports            declared ports, each with its public URL
    POST   /v1/sandboxes/{id}/ports            declare one: {port, name, protocol}
    DELETE /v1/sandboxes/{id}/ports/{port}
    GET    /v1/sandboxes/{id}/logs?tail=N      what the sandbox's init and start command printed

Ports are declarations for now: every port is reachable on `<port>-<id>.<D>`;
access modes and TCP/TLS protocols are the gateway issue's.
"""

from __future__ import annotations

import time
from typing import Any

from quart import Response, request
from quart_trio import QuartTrio

from controlplane.api.envelope import success
from controlplane.api.schemas import iso, pagination_json, parse_page, port_field
from controlplane.api.wire import json_response, read_json_body
from controlplane.errors import BadRequest, NotFound
from controlplane.lifecycle.service import SandboxService
from controlplane.records import SandboxRecord
from controlplane.templates import BUILTIN, Template, resolve

MAX_TAIL = 10_000


def _template_json(t: Template) -> dict[str, Any]:
    return {"template_id": t.id, "name": t.id, "image": t.image, "start_cmd": t.start_cmd, "user": t.user}


def register(app: QuartTrio, *, service: SandboxService, domain: str, public_port: int | None) -> None:
    suffix = "" if public_port in (None, 443) else f":{public_port}"

    def ports_json(rec: SandboxRecord) -> list[dict[str, Any]]:
        return [{**p, "url": f"https://{p['port']}-{rec.id}.{domain}{suffix}/"} for p in rec.custom_ports]

    @app.get("/v1/templates")
    async def list_templates() -> Response:
        page = parse_page(request.args.to_dict())
        everything = [_template_json(t) for t in sorted(BUILTIN.values(), key=lambda t: t.id)]
        data = {
            "templates": everything[page.offset : page.offset + page.limit],
            "pagination": pagination_json(page, len(everything)),
        }
        return json_response(success(data))

    @app.get("/v1/templates/<template_id>")
    async def get_template(template_id: str) -> Response:
        return json_response(success(_template_json(resolve(template_id))))

    @app.get("/v1/sandboxes/<sandbox_id>/ports")
    async def list_ports(sandbox_id: str) -> Response:
        rec = service.get(sandbox_id)
        return json_response(success({"sandbox_id": rec.id, "ports": ports_json(rec)}))

    @app.post("/v1/sandboxes/<sandbox_id>/ports")
    async def add_port(sandbox_id: str) -> Response:
        port = port_field(await read_json_body(), "port")
        rec = await service.add_port(sandbox_id, port)
        [added] = [p for p in ports_json(rec) if p["port"] == port["port"]]
        return json_response(success(added, "port declared"), 201)

    @app.delete("/v1/sandboxes/<sandbox_id>/ports/<port>")
    async def remove_port(sandbox_id: str, port: str) -> Response:
        if not (port.isascii() and port.isdigit() and 0 < len(port) <= 5):
            raise NotFound(f"sandbox {sandbox_id} declares no port {port[:10]!r}", code="port_not_found")
        rec = await service.remove_port(sandbox_id, int(port))
        return json_response(success({"sandbox_id": rec.id, "ports": ports_json(rec)}, "port removed"))

    @app.get("/v1/sandboxes/<sandbox_id>/logs")
    async def logs(sandbox_id: str) -> Response:
        raw_tail = request.args.get("tail", "200")
        if not (raw_tail.isascii() and raw_tail.isdigit() and 0 < int(raw_tail[:6]) <= MAX_TAIL):
            raise BadRequest(f"tail must be an integer from 1 to {MAX_TAIL}", code="invalid_query")
        text = (await service.logs(sandbox_id, int(raw_tail))).decode("utf-8", "replace")
        lines = text.splitlines()
        return json_response(success({"sandbox_id": sandbox_id, "lines": lines, "fetched_at": iso(time.time())}))
