"""Users' templates: create (build, commit, import), update, delete, and their background jobs.

A new template's row is written first, `building`, and the request answers at once;
a background task (on the lifecycle service's nursery, so it outlives the request)
makes the image and sets the row `ready`, or `failed` with the reason. Its output
goes to the template's build log as it comes. A build the appliance did not live
to finish is marked failed on the next start (`fail_unfinished`).

Every image is `localhost/scalebox/user/<template-id>:latest`, labelled as the
appliance's own (io.scalebox.managed, io.scalebox.instance) and with its template.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

from appliance import log
from controlplane.api.template_schemas import TemplateFields, require_name
from controlplane.apikeys import random_id
from controlplane.containerfile import rewrite
from controlplane.errors import ApiError, Conflict, Forbidden, NotFound
from controlplane.events import new_event
from controlplane.lifecycle.service import SandboxService
from controlplane.lifecycle.states import LIVE, State
from controlplane.runtime.base import RUNC, RuntimeFailure
from controlplane.store import Store
from controlplane.templates import BUILDING, BUILTIN, FAILED, READY, Template, find, resolve, user_image

LABEL_TEMPLATE = "io.scalebox.template-id"


class TemplateService:
    def __init__(self, *, store: Store, sandboxes: SandboxService, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.templates = store.templates
        self.sandboxes = sandboxes
        self.runtime = sandboxes.runtime
        self.clock = clock

    # -- reading -------------------------------------------------------------------

    def visible(self, owner_id: str) -> list[Template]:
        """The built-ins, then the owner's own, oldest first."""
        return [*sorted(BUILTIN.values(), key=lambda t: t.id), *self.templates.list_of(owner_id)]

    def get(self, ref: str, owner_id: str) -> Template:
        """A template the owner can see, in any status; another user's is 404."""
        template = find(ref, owner_id, self.templates)
        if template is None:
            raise NotFound(f"template {ref[:128]} does not exist", code="template_not_found")
        return template

    def _own(self, ref: str, owner_id: str, doing: str) -> Template:
        template = self.get(ref, owner_id)
        if template.builtin:
            raise Forbidden(
                f"template {template.id} is built in and read-only; you cannot {doing} it. "
                "Build your own from it instead (POST /v1/templates with FROM " + template.id + ")",
                code="template_read_only",
            )
        return template

    # -- creating ------------------------------------------------------------------

    def _new(self, owner_id: str, fields: TemplateFields, *, source: str, parent: Template | None) -> Template:
        """A new template's row, `building`, its unset settings inherited from `parent`."""
        template_id = random_id("tpl-", 16)
        now = self.clock()
        inherit = parent or Template(id="", image="")
        template = Template(
            id=template_id,
            name=require_name(fields),
            owner_id=owner_id,
            image=user_image(template_id),
            status=BUILDING,
            source=source,
            description=fields.description or "",
            cpu_count=fields.cpu_count if fields.cpu_count is not None else inherit.cpu_count,
            memory_mb=fields.memory_mb if fields.memory_mb is not None else inherit.memory_mb,
            ports=fields.ports if fields.ports is not None else inherit.ports,
            start_cmd=_command(fields.start_cmd, inherit.start_cmd),
            ready_cmd=_command(fields.ready_cmd, inherit.ready_cmd),
            runtime=fields.runtime or (parent.runtime if parent is not None else RUNC),
            created_at=now,
            updated_at=now,
        )
        self.templates.insert(template)
        log.event("template.create", template_id=template_id, owner_id=owner_id, source=source)
        return template

    def labels(self, template: Template) -> dict[str, str]:
        return {**self.sandboxes.labels(), LABEL_TEMPLATE: template.id}

    def build(self, owner_id: str, fields: TemplateFields, containerfile: object) -> Template:
        """From a Containerfile whose FROMs name templates the owner can see."""
        rewritten = rewrite(containerfile, lambda ref: resolve(ref, owner_id, self.templates))
        template = self._new(owner_id, fields, source="containerfile", parent=rewritten.parent)

        async def work() -> None:
            def on_line(line: str) -> None:
                self.templates.append_log(template.id, line)

            await self.runtime.build(rewritten.text, template.image, labels=self.labels(template), on_line=on_line)

        self._start(template, work)
        return template

    def commit(self, owner_id: str, sandbox_id: str, fields: TemplateFields) -> Template:
        """From a running or paused sandbox of the owner's (the route has checked it is theirs)."""
        rec = self.sandboxes.get(sandbox_id)
        if rec.state not in (State.RUNNING, State.PAUSED):
            raise Conflict(
                f"sandbox {rec.id} is {rec.state.value}; only a running or paused sandbox can become a template",
                code="invalid_state",
            )
        parent = find(rec.template_id, owner_id, self.templates)
        template = self._new(
            owner_id, replace(fields, runtime=fields.runtime or rec.runtime), source="sandbox", parent=parent
        )

        async def work() -> None:
            self.templates.append_log(template.id, f"committing the files of sandbox {rec.id}")
            image_id = await self.sandboxes.commit(rec.id, tag=template.image, labels=self.labels(template))
            self.templates.append_log(template.id, f"committed image {image_id}")

        self._start(template, work)
        return template

    def import_archive(self, owner_id: str, fields: TemplateFields, archive: Path, *, remove_after: bool) -> Template:
        """From a docker-archive or oci-archive; `remove_after`: the file is an upload of ours."""
        try:
            template = self._new(owner_id, fields, source="archive", parent=None)
        except BaseException:
            if remove_after:
                archive.unlink(missing_ok=True)
            raise

        async def work() -> None:
            try:
                self.templates.append_log(template.id, "loading the image archive")
                image_id = await self.runtime.load(archive, template.image)
                self.templates.append_log(template.id, f"loaded image {image_id}")
            finally:
                if remove_after:
                    archive.unlink(missing_ok=True)

        self._start(template, work)
        return template

    def _start(self, template: Template, work: Callable[[], Awaitable[None]]) -> None:
        self.sandboxes.spawn(self._run, template.id, work)

    async def _run(self, template_id: str, work: Callable[[], Awaitable[None]]) -> None:
        try:
            await work()
        except (ApiError, RuntimeFailure) as exc:
            self._finish(template_id, FAILED, exc.message if isinstance(exc, ApiError) else str(exc))
        except Exception as exc:
            # A bug here must still end the build: `building` forever helps nobody.
            log.event("template.crash", template_id=template_id, error=repr(exc))
            self._finish(template_id, FAILED, f"the appliance failed: {type(exc).__name__}")
        else:
            self._finish(template_id, READY, None)

    def _finish(self, template_id: str, status: str, reason: str | None) -> None:
        template = self.templates.get(template_id)
        if template is None:
            return
        if reason:
            self.templates.append_log(template_id, f"failed: {reason}")
        self.templates.update(replace(template, status=status, reason=reason, updated_at=self.clock()))
        log.event("template.built", template_id=template_id, status=status, reason=reason)
        # Webhooks and notifications of the template's owner hear of it (controlplane/events.py).
        kind = "template.built" if status == READY else "template.failed"
        self.sandboxes.events.publish(
            new_event(
                kind,
                owner_id=template.owner_id or "",
                subject_id=template_id,
                data={"name": template.name, "status": status, "reason": reason},
                now=self.clock(),
            )
        )

    # -- changing ------------------------------------------------------------------

    def update(self, owner_id: str, ref: str, fields: TemplateFields) -> Template:
        template = self._own(ref, owner_id, "change")
        changed = replace(
            template,
            name=fields.name if fields.name is not None else template.name,
            description=fields.description if fields.description is not None else template.description,
            cpu_count=fields.cpu_count if fields.cpu_count is not None else template.cpu_count,
            memory_mb=fields.memory_mb if fields.memory_mb is not None else template.memory_mb,
            ports=fields.ports if fields.ports is not None else template.ports,
            start_cmd=_command(fields.start_cmd, template.start_cmd),
            ready_cmd=_command(fields.ready_cmd, template.ready_cmd),
            runtime=fields.runtime or template.runtime,
            updated_at=self.clock(),
        )
        self.templates.update(changed)
        return changed

    async def delete(self, owner_id: str, ref: str) -> Template:
        template = self._own(ref, owner_id, "delete")
        if template.status == BUILDING:
            raise Conflict(
                f"template {template.id} is still building; delete it once GET .../status says ready or failed",
                code="template_busy",
            )
        users = [rec.id for rec in self.store.sandboxes_in(LIVE) if rec.template_id == template.id]
        if users:
            shown = ", ".join(users[:5]) + (" ..." if len(users) > 5 else "")
            raise Conflict(
                f"template {template.id} is used by {len(users)} live sandbox(es) ({shown}); delete them first",
                code="template_in_use",
            )
        try:
            await self.runtime.remove_image(template.image)
        except RuntimeFailure as exc:
            raise Conflict(
                f"the image of template {template.id} could not be removed: {exc}", code="image_busy"
            ) from exc
        self.templates.delete(template.id)
        log.event("template.delete", template_id=template.id, owner_id=owner_id)
        return template

    def fail_unfinished(self) -> None:
        for template_id in self.templates.fail_unfinished(self.clock()):
            log.event("template.unfinished", template_id=template_id)


def _command(given: str | None, inherited: str | None) -> str | None:
    """A command setting: "" clears it, None keeps (or inherits) the other."""
    if given is None:
        return inherited
    return given or None
