"""Projects: a user's folders of sandboxes.

Every user has a default project, made when first needed (their first sandbox, or
their first look at their projects); a sandbox created without `project_id` lands
there. Projects are the owner's alone: another user's answers 404. A project is
deleted only when empty (no live sandbox), and never the default one.

`sandboxes_connect` is the opt-in of issue 5: sandboxes of one project that has it
may open connections to each other directly over the appliance's bridge (the
firewall's `peers` set); everywhere else sandboxes cannot reach each other.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from controlplane.apikeys import random_id
from controlplane.errors import BadRequest, Conflict, NotFound
from controlplane.lifecycle.states import LIVE
from controlplane.records import ProjectRecord
from controlplane.store import Store

DEFAULT_NAME = "default"
MAX_PROJECTS = 100
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_DESCRIPTION_MAX = 500


@dataclass(frozen=True)
class ProjectFields:
    name: str | None = None
    description: str | None = None
    sandboxes_connect: bool | None = None


def parse_project(body: Any, *, creating: bool) -> ProjectFields:
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_body")
    allowed = {"name", "description", "sandboxes_connect"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}; send {', '.join(sorted(allowed))}", code="invalid_field")
    name, description, connect = body.get("name"), body.get("description"), body.get("sandboxes_connect")
    if name is None and creating:
        raise BadRequest("name is required", code="invalid_field")
    if name is not None and (not isinstance(name, str) or not _NAME.fullmatch(name)):
        raise BadRequest(
            "name must be 1-64 characters: lowercase letters, digits, '.', '_' or '-', starting with a letter or digit",
            code="invalid_field",
        )
    if description is not None and (not isinstance(description, str) or len(description) > _DESCRIPTION_MAX):
        raise BadRequest(f"description must be text of at most {_DESCRIPTION_MAX} characters", code="invalid_field")
    if connect is not None and not isinstance(connect, bool):
        raise BadRequest("sandboxes_connect must be true or false", code="invalid_field")
    return ProjectFields(name=name, description=description, sandboxes_connect=connect)


def peer_pairs(sandboxes: list[tuple[str, str | None]], connecting: set[str]) -> list[tuple[str, str]]:
    """Address pairs that may connect directly: (project id, address) of live sandboxes,
    paired within each project that opted in."""
    by_project: dict[str, list[str]] = {}
    for project_id, address in sandboxes:
        if project_id in connecting and address:
            by_project.setdefault(project_id, []).append(address)
    pairs = []
    for addresses in by_project.values():
        ordered = sorted(set(addresses))
        pairs += [(a, b) for i, a in enumerate(ordered) for b in ordered[i + 1 :]]
    return pairs


class Projects:
    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def default(self, owner_id: str) -> ProjectRecord:
        project = self.store.default_project(owner_id)
        if project is None:
            now = self.clock()
            name = (
                DEFAULT_NAME if self.store.project_by_name(owner_id, DEFAULT_NAME) is None else random_id("default-", 6)
            )
            project = ProjectRecord(
                id=random_id("prj-"), owner_id=owner_id, name=name, is_default=True, created_at=now, updated_at=now
            )
            self.store.put_project(project)
        return project

    def list(self, owner_id: str) -> list[ProjectRecord]:
        self.default(owner_id)
        return self.store.projects_of(owner_id)

    def get(self, owner_id: str, ref: str) -> ProjectRecord:
        """By id or by name; another user's is as if it did not exist."""
        project = self.store.get_project(ref)
        if project is None or project.owner_id != owner_id:
            project = self.store.project_by_name(owner_id, ref)
        if project is None:
            raise NotFound(f"project {ref[:64]} does not exist", code="project_not_found")
        return project

    def resolve(self, owner_id: str, ref: str | None) -> ProjectRecord:
        """The project a new or moved sandbox goes to: the named one, else the default."""
        return self.default(owner_id) if not ref else self.get(owner_id, ref)

    def create(self, owner_id: str, fields: ProjectFields) -> ProjectRecord:
        assert fields.name is not None
        self.default(owner_id)
        if self.store.project_by_name(owner_id, fields.name) is not None:
            raise Conflict(f"you have a project named {fields.name!r}; pick another name", code="project_exists")
        if len(self.store.projects_of(owner_id)) >= MAX_PROJECTS:
            raise Conflict(f"{MAX_PROJECTS} projects, the most a user may have", code="too_many_projects")
        now = self.clock()
        project = ProjectRecord(
            id=random_id("prj-"),
            owner_id=owner_id,
            name=fields.name,
            description=fields.description or "",
            sandboxes_connect=bool(fields.sandboxes_connect),
            created_at=now,
            updated_at=now,
        )
        self.store.put_project(project)
        return project

    def update(self, owner_id: str, ref: str, fields: ProjectFields) -> ProjectRecord:
        project = self.get(owner_id, ref)
        if fields.name is not None and fields.name != project.name:
            if self.store.project_by_name(owner_id, fields.name) is not None:
                raise Conflict(f"you have a project named {fields.name!r}; pick another name", code="project_exists")
            project = replace(project, name=fields.name)
        if fields.description is not None:
            project = replace(project, description=fields.description)
        if fields.sandboxes_connect is not None:
            project = replace(project, sandboxes_connect=fields.sandboxes_connect)
        project = replace(project, updated_at=self.clock())
        self.store.put_project(project)
        return project

    def delete(self, owner_id: str, ref: str) -> ProjectRecord:
        project = self.get(owner_id, ref)
        if project.is_default:
            raise Conflict("the default project cannot be deleted", code="default_project")
        live = self.store.count_sandboxes_in(project.id, LIVE)
        if live:
            raise Conflict(
                f"project {project.name} holds {live} live sandbox(es); delete or move them first",
                code="project_not_empty",
            )
        self.store.delete_project(project.id)
        return project
