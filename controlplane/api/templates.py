"""The /v1 template routes: the built-ins and the caller's own templates.

    GET    /v1/templates                          built-ins and yours, paginated
    POST   /v1/templates                          build one: {name, dockerfile, ...settings} -> 201, building
    POST   /v1/templates/import                   from an image archive -> 202, building:
                                                  JSON {name, archive_path, ...} (admins: a file on the host),
                                                  or the archive itself as the body (Content-Type
                                                  application/x-tar, settings in the query: ?name=...)
    GET    /v1/templates/{id}                     by id, or by name
    PUT    /v1/templates/{id}   (or PATCH)        change name, description, settings
    DELETE /v1/templates/{id}                     409 while a live sandbox uses it; the image goes too
    GET    /v1/templates/{id}/status              build status and the last lines of its log
    GET    /v1/templates/{id}/logs?tail=N         the build log
    POST   /v1/sandboxes/{id}/create-template     commit a running or paused sandbox: {name, ...settings}

Settings: description, cpu_count, memory_mb, ports, start_cmd, ready_cmd, runtime
(controlplane/api/template_schemas.py). A template sees its unset settings filled
from the template it is made from (the FROM of a build, a sandbox's template).
Built-in templates are read-only (403); another user's template is 404.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio

from controlplane.api.envelope import success
from controlplane.api.identity import current_user_id
from controlplane.api.schemas import HostLimits, iso, json_object, pagination_json, parse_page
from controlplane.api.template_schemas import parse_archive_path, parse_fields, query_fields, template_json
from controlplane.api.wire import json_response, read_json_body
from controlplane.errors import BadRequest, Forbidden
from controlplane.store import Store
from controlplane.templateservice import TemplateService
from controlplane.templatestore import MAX_LOG_LINES
from controlplane.users import ADMIN

# Lines of the build log shown in GET .../status.
STATUS_LOG_LINES = 50
_TAR_TYPES = ("application/x-tar", "application/octet-stream", "application/gzip", "application/x-gzip")


def register(app: QuartTrio, *, templates: TemplateService, store: Store, limits: HostLimits) -> None:
    templates.fail_unfinished()

    @app.get("/v1/templates")
    async def list_templates() -> Response:
        page = parse_page(request.args.to_dict())
        everything = templates.visible(current_user_id())
        data = {
            "templates": [template_json(t) for t in everything[page.offset : page.offset + page.limit]],
            "pagination": pagination_json(page, len(everything)),
        }
        return json_response(success(data))

    @app.post("/v1/templates")
    async def create_template() -> Response:
        body = json_object(await read_json_body(), "request body")
        text = body.get("dockerfile", body.get("containerfile"))
        if "dockerfile" in body and "containerfile" in body:
            raise BadRequest("send dockerfile or containerfile, not both", code="invalid_field")
        if text is None:
            raise BadRequest(
                "dockerfile is required: a Containerfile starting FROM a template, e.g. "
                '"FROM base\\nRUN ..."; to make a template from a sandbox, POST '
                "/v1/sandboxes/{id}/create-template; from an image archive, POST /v1/templates/import",
                code="invalid_field",
            )
        fields = parse_fields(body, limits, extra=frozenset({"dockerfile", "containerfile"}))
        template = templates.build(current_user_id(), fields, text)
        return json_response(success(template_json(template), "template build started"), 201)

    @app.post("/v1/templates/import")
    async def import_template() -> Response:
        user_id = current_user_id()
        content_type = (request.mimetype or "").lower()
        if content_type in _TAR_TYPES:
            fields = parse_fields(query_fields(request.args.to_dict()), limits)
            # Before the body is read: a refusal must not cost an upload.
            if fields.name is None:
                raise BadRequest("name is required (?name=...)", code="invalid_field")
            archive = await _save_upload()
            template = templates.import_archive(user_id, fields, archive, remove_after=True)
        else:
            body = json_object(await read_json_body(), "request body")
            fields = parse_fields(body, limits, extra=frozenset({"archive_path"}))
            if body.get("archive_path") is None:
                raise BadRequest(
                    "send archive_path (a file on the appliance host), or the archive itself as the body "
                    "with Content-Type application/x-tar and ?name=...",
                    code="invalid_field",
                )
            user = store.get_user(user_id)
            if user is None or user.role != ADMIN:
                raise Forbidden(
                    "only an admin may import from a path on the appliance host; upload the archive as the "
                    "body instead (Content-Type application/x-tar)",
                    code="admin_only",
                )
            archive = parse_archive_path(body["archive_path"])
            template = templates.import_archive(user_id, fields, archive, remove_after=False)
        data = {**template_json(template), "message": "import started; see GET /v1/templates/{id}/status"}
        return json_response(success(data, "template import started"), 202)

    @app.get("/v1/templates/<template_id>")
    async def get_template(template_id: str) -> Response:
        return json_response(success(template_json(templates.get(template_id, current_user_id()))))

    @app.route("/v1/templates/<template_id>", methods=["PUT", "PATCH"])
    async def update_template(template_id: str) -> Response:
        fields = parse_fields(await read_json_body(), limits)
        template = templates.update(current_user_id(), template_id, fields)
        return json_response(success({"template": template_json(template)}, "template updated"))

    @app.delete("/v1/templates/<template_id>")
    async def delete_template(template_id: str) -> Response:
        template = await templates.delete(current_user_id(), template_id)
        return json_response(success({"template_id": template.id}, "template deleted"))

    @app.get("/v1/templates/<template_id>/status")
    async def template_status(template_id: str) -> Response:
        template = templates.get(template_id, current_user_id())
        lines = [] if template.builtin else store.templates.log_lines(template.id, STATUS_LOG_LINES)
        data = {
            "template_id": template.id,
            "name": template.shown_name,
            "status": template.status,
            "build_status": template.status,
            "reason": template.reason,
            "error_message": template.reason,
            "logs": lines,
            "updated_at": iso(template.updated_at),
        }
        return json_response(success(data))

    @app.get("/v1/templates/<template_id>/logs")
    async def template_logs(template_id: str) -> Response:
        template = templates.get(template_id, current_user_id())
        raw = request.args.get("tail", str(MAX_LOG_LINES))
        # The length bound first: int() of thousands of digits raises (and costs) before any range check.
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 6 and 0 < int(raw) <= MAX_LOG_LINES):
            raise BadRequest(f"tail must be an integer from 1 to {MAX_LOG_LINES}", code="invalid_query")
        lines = [] if template.builtin else store.templates.log_lines(template.id, int(raw))
        return json_response(success({"template_id": template.id, "status": template.status, "lines": lines}))

    @app.post("/v1/sandboxes/<sandbox_id>/create-template")
    async def create_from_sandbox(sandbox_id: str) -> Response:
        # The app's authentication hook has already made another user's sandbox a 404.
        fields = parse_fields(await read_json_body(), limits)
        template = templates.commit(current_user_id(), sandbox_id, fields)
        data: dict[str, Any] = {**template_json(template), "message": "commit started; see .../status"}
        return json_response(success(data, "template creation started"))


async def _save_upload() -> Path:
    """The request body, to a file of ours the import removes when done."""
    fd, name = tempfile.mkstemp(prefix="scalebox-import-", suffix=".tar", dir=_upload_dir())
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            async for chunk in request.body:
                await trio.to_thread.run_sync(f.write, chunk)
        if path.stat().st_size == 0:
            raise BadRequest("the request body is empty; send the image archive", code="invalid_body")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def _upload_dir() -> str:
    # On disk, not tmpfs: image archives are hundreds of MB.
    return "/var/tmp" if os.path.isdir("/var/tmp") else tempfile.gettempdir()
