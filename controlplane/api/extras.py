"""Sandbox ports, container logs and egress policy. (Templates: api/templates.py.)

    GET    /v1/sandboxes/{id}/ports            declared ports, each with where to reach it
    POST   /v1/sandboxes/{id}/ports            declare one: {port, name, protocol, access, host_port}
    DELETE /v1/sandboxes/{id}/ports/{port}     (its tokens go too)
    GET    /v1/sandboxes/{id}/ports/{port}/tokens              live tokens of a port (no secrets)
    POST   /v1/sandboxes/{id}/ports/{port}/tokens              mint one: {expires_in, path_prefix, methods, name}
    DELETE /v1/sandboxes/{id}/ports/{port}/tokens/{token_id}   revoke one
    GET    /v1/sandboxes/{id}/logs?tail=N      what the sandbox's init and start command printed
    GET    /v1/sandboxes/{id}/network          its egress policy
    PUT    /v1/sandboxes/{id}/network          replace it: {allow_internet_access?, allow_out, deny_out}

What a declaration means is in controlplane/ports.py, port tokens in
controlplane/porttokens.py. A token's secret is shown once, when minted.
"""

from __future__ import annotations

import time
from typing import Any

from quart import Response, request
from quart_trio import QuartTrio

from controlplane.api.envelope import success
from controlplane.api.schemas import iso, network_json, parse_network_update
from controlplane.api.wire import json_response, read_json_body
from controlplane.errors import BadRequest, NotFound
from controlplane.lifecycle.service import SandboxService
from controlplane.ports import parse_port, port_json
from controlplane.porttokens import live, parse_token_request
from controlplane.records import SandboxRecord
from controlplane.templates import find
from controlplane.tokens import mint_port_token

MAX_TAIL = 10_000


def _port_number(sandbox_id: str, text: str) -> int:
    if not (text.isascii() and text.isdigit() and 0 < len(text) <= 5 and 0 < int(text) < 65536):
        raise NotFound(f"sandbox {sandbox_id} declares no port {text[:10]!r}", code="port_not_found")
    return int(text)


def _token_json(t: dict[str, Any]) -> dict[str, Any]:
    return {
        "token_id": t["id"],
        "port": t["port"],
        "name": t.get("name"),
        "path_prefix": t.get("path_prefix"),
        "methods": t.get("methods"),
        "created_at": iso(t.get("created_at")),
        "expires_at": iso(t.get("expires_at")),
    }


def register(app: QuartTrio, *, service: SandboxService, domain: str, public_port: int | None, secret: bytes) -> None:
    suffix = "" if public_port in (None, 443) else f":{public_port}"

    def ports_json(rec: SandboxRecord) -> list[dict[str, Any]]:
        return [port_json(p, sandbox_id=rec.id, domain=domain, port_suffix=suffix) for p in rec.custom_ports]

    @app.get("/v1/sandboxes/<sandbox_id>/ports")
    async def list_ports(sandbox_id: str) -> Response:
        rec = service.get(sandbox_id)
        ports = ports_json(rec)
        # Declared by its template at create (templates.for_create); none once the template is gone.
        template = find(rec.template_id, rec.owner_id, service.store.templates)
        inherited = {p.port for p in template.ports} if template is not None else set()
        template_ports = [p for p in ports if p["port"] in inherited]
        return json_response(
            success({"sandbox_id": rec.id, "ports": ports, "custom_ports": ports, "template_ports": template_ports})
        )

    @app.post("/v1/sandboxes/<sandbox_id>/ports")
    async def add_port(sandbox_id: str) -> Response:
        port = parse_port(await read_json_body(), "port")
        rec = await service.add_port(sandbox_id, port)
        [added] = [p for p in ports_json(rec) if p["port"] == port.port]
        return json_response(success(added, "port declared"), 201)

    @app.delete("/v1/sandboxes/<sandbox_id>/ports/<port>")
    async def remove_port(sandbox_id: str, port: str) -> Response:
        rec = await service.remove_port(sandbox_id, _port_number(sandbox_id, port))
        return json_response(success({"sandbox_id": rec.id, "ports": ports_json(rec)}, "port removed"))

    @app.get("/v1/sandboxes/<sandbox_id>/ports/<port>/tokens")
    async def list_port_tokens(sandbox_id: str, port: str) -> Response:
        number = _port_number(sandbox_id, port)
        rec = service.get(sandbox_id)
        tokens = [_token_json(t) for t in live(rec.port_tokens, time.time()) if t["port"] == number]
        return json_response(success({"sandbox_id": rec.id, "port": number, "tokens": tokens}))

    @app.post("/v1/sandboxes/<sandbox_id>/ports/<port>/tokens")
    async def add_port_token(sandbox_id: str, port: str) -> Response:
        number = _port_number(sandbox_id, port)
        req = parse_token_request(await read_json_body())
        rec, record = await service.add_port_token(sandbox_id, number, req)
        token = mint_port_token(secret, rec.id, str(record["id"]))
        host = f"{number}-{rec.id}.{domain}{suffix}"
        data = {
            **_token_json(record),
            "sandbox_id": rec.id,
            "token": token,
            "header": {"X-Access-Token": token},
            # Opened in a browser once, it becomes a cookie for that host (gateway/credentials.py).
            "browser_url": f"https://{host}{req.path_prefix or '/'}?token={token}",
        }
        return json_response(success(data, "port token created; its secret is shown only now"), 201)

    @app.delete("/v1/sandboxes/<sandbox_id>/ports/<port>/tokens/<token_id>")
    async def revoke_port_token(sandbox_id: str, port: str, token_id: str) -> Response:
        number = _port_number(sandbox_id, port)
        await service.revoke_port_token(sandbox_id, number, token_id)
        return json_response(success({"sandbox_id": sandbox_id, "port": number, "token_id": token_id}, "revoked"))

    @app.get("/v1/sandboxes/<sandbox_id>/network")
    async def get_network(sandbox_id: str) -> Response:
        rec = service.get(sandbox_id)
        return json_response(success({"sandbox_id": rec.id, **network_json(rec)}))

    @app.put("/v1/sandboxes/<sandbox_id>/network")
    async def put_network(sandbox_id: str) -> Response:
        update = parse_network_update(await read_json_body())
        rec = await service.set_network(
            sandbox_id, allow_internet_access=update.allow_internet_access, egress=update.egress
        )
        return json_response(success({"sandbox_id": rec.id, **network_json(rec)}, "egress policy replaced"))

    @app.get("/v1/sandboxes/<sandbox_id>/logs")
    async def logs(sandbox_id: str) -> Response:
        raw_tail = request.args.get("tail", "200")
        # The length first: int() of thousands of digits raises, and "000001999" is no small number.
        if not (raw_tail.isascii() and raw_tail.isdigit() and len(raw_tail) <= 6 and 0 < int(raw_tail) <= MAX_TAIL):
            raise BadRequest(f"tail must be an integer from 1 to {MAX_TAIL}", code="invalid_query")
        text = (await service.logs(sandbox_id, int(raw_tail))).decode("utf-8", "replace")
        lines = text.splitlines()
        return json_response(success({"sandbox_id": sandbox_id, "lines": lines, "fetched_at": iso(time.time())}))
