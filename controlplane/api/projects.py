"""Projects (controlplane/projects.py has the rules).

GET    /v1/projects                        the caller's projects (the default one made if missing)
POST   /v1/projects                        {name, description, sandboxes_connect}
GET    /v1/projects/{id}                   by id or name
PATCH  /v1/projects/{id}                   {name, description, sandboxes_connect}
DELETE /v1/projects/{id}                   only when it holds no live sandbox; never the default
GET    /v1/projects/{id}/sandboxes         its sandboxes (as GET /v1/sandboxes?project_id=)
POST   /v1/sandboxes/{id}/move             {project_id}: into another project of the caller's
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quart import Response, request
from quart_trio import QuartTrio

from controlplane.api.envelope import success
from controlplane.api.identity import current_user_id
from controlplane.api.schemas import iso, pagination_json, parse_page, parse_states
from controlplane.api.wire import json_response, read_json_body
from controlplane.errors import BadRequest
from controlplane.lifecycle.service import SandboxService
from controlplane.lifecycle.states import LIVE
from controlplane.projects import Projects, parse_project
from controlplane.records import ProjectRecord, SandboxRecord
from controlplane.store import SandboxQuery


def project_json(project: ProjectRecord, live_sandboxes: int) -> dict[str, Any]:
    return {
        "project_id": project.id,
        "name": project.name,
        "description": project.description,
        "is_default": project.is_default,
        "sandboxes_connect": project.sandboxes_connect,
        "live_sandboxes": live_sandboxes,
        "created_at": iso(project.created_at),
        "updated_at": iso(project.updated_at),
    }


def register(
    app: QuartTrio,
    *,
    projects: Projects,
    service: SandboxService,
    render: Callable[[SandboxRecord], dict[str, Any]],
) -> None:
    def as_json(project: ProjectRecord) -> dict[str, Any]:
        return project_json(project, projects.store.count_sandboxes_in(project.id, LIVE))

    @app.get("/v1/projects")
    async def list_projects() -> Response:
        return json_response(success({"projects": [as_json(p) for p in projects.list(current_user_id())]}))

    @app.post("/v1/projects")
    async def create_project() -> Response:
        fields = parse_project(await read_json_body(), creating=True)
        project = projects.create(current_user_id(), fields)
        return json_response(success(as_json(project), "project created"), 201)

    @app.get("/v1/projects/<project_id>")
    async def get_project(project_id: str) -> Response:
        return json_response(success(as_json(projects.get(current_user_id(), project_id))))

    @app.patch("/v1/projects/<project_id>")
    async def update_project(project_id: str) -> Response:
        fields = parse_project(await read_json_body(), creating=False)
        project = projects.update(current_user_id(), project_id, fields)
        # Its sandboxes' peers follow sandboxes_connect at once.
        await service.network_policy.sandboxes_changed()
        return json_response(success(as_json(project)))

    @app.delete("/v1/projects/<project_id>")
    async def delete_project(project_id: str) -> Response:
        project = projects.delete(current_user_id(), project_id)
        return json_response(success({"project_id": project.id}, "project deleted"))

    @app.get("/v1/projects/<project_id>/sandboxes")
    async def project_sandboxes(project_id: str) -> Response:
        project = projects.get(current_user_id(), project_id)
        args = request.args.to_dict()
        page = parse_page(args)
        query = SandboxQuery(
            states=parse_states(args.get("status")),
            owner_id=current_user_id(),
            project_id=project.id,
            limit=page.limit,
            offset=page.offset,
        )
        records, total = service.list(query)
        return json_response(
            success({"sandboxes": [render(r) for r in records], "pagination": pagination_json(page, total)})
        )

    @app.post("/v1/sandboxes/<sandbox_id>/move")
    async def move_sandbox(sandbox_id: str) -> Response:
        body = await read_json_body()
        ref = body.get("project_id") if isinstance(body, dict) else None
        if not isinstance(ref, str) or not ref:
            raise BadRequest('send {"project_id": "<project id or name>"}', code="invalid_field")
        project = projects.get(current_user_id(), ref)
        rec = await service.move(sandbox_id, project.id)
        return json_response(success(render(rec), f"sandbox moved to project {project.name}"))
