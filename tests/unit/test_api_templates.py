"""User templates through the /v1 API: Quart test client, FakeRuntime, a temporary store."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from controlplane.apikeys import new_api_key
from controlplane.records import UserRecord
from controlplane.runtime.base import RuntimeFailure
from controlplane.templates import USER_IMAGE_PREFIX
from controlplane.templatestore import MAX_LOG_LINES
from tests.unit.test_api import Api, api  # noqa: F401 - the fixture

BUILD = "FROM base\nRUN echo built > /opt/marker\nENV GREETING=hello\n"


def other_user(api: Api, user_id: str = "usr-other") -> str:  # noqa: F811
    """A second user with a key of their own; returns the key's secret."""
    api.store.put_user(UserRecord(id=user_id, name=user_id.removeprefix("usr-"), role="user", created_at=time.time()))
    record, secret = new_api_key("other", time.time())
    api.store.put_api_key(replace(record, user_id=user_id))
    return secret


async def build(api: Api, key: str = "default", **body: Any) -> dict[str, Any]:  # noqa: F811
    body.setdefault("dockerfile", BUILD)
    status, payload = await api.call("POST", "/v1/templates", body=body, key=key)
    assert status == 201, payload
    data: dict[str, Any] = payload["data"]
    return data


async def settle(api: Api, template_id: str, key: str = "default") -> dict[str, Any]:  # noqa: F811
    """The template once its background job has finished."""
    with trio.fail_after(5):
        while True:
            status, payload = await api.call("GET", f"/v1/templates/{template_id}/status", key=key)
            assert status == 200, payload
            if payload["data"]["status"] != "building":
                data: dict[str, Any] = payload["data"]
                return data
            await trio.sleep(0.01)


async def ready_template(api: Api, key: str = "default", **body: Any) -> dict[str, Any]:  # noqa: F811
    made = await build(api, key, **body)
    assert (await settle(api, made["template_id"], key))["status"] == "ready"
    return made


# -- create by build ------------------------------------------------------------------------


async def test_build_goes_from_building_to_ready_with_logs(api: Api) -> None:  # noqa: F811
    gate = trio.Event()
    api.runtime.build_gate = gate
    made = await build(api, name="web-app", description="a web app")
    tid = made["template_id"]
    assert tid.startswith("tpl-") and made["status"] == "building" and made["name"] == "web-app"
    assert made["image"] == f"{USER_IMAGE_PREFIX}{tid}:latest" and made["source"] == "containerfile"
    await trio.sleep(0.01)
    status, payload = await api.call("GET", f"/v1/templates/{tid}/status")
    assert payload["data"]["status"] == "building"
    assert payload["data"]["logs"] == ["STEP 1/3: FROM localhost/scalebox/base:latest"]
    # Not startable while it builds.
    status, payload = await api.call("POST", "/v1/sandboxes", body={"template": tid})
    assert status == 409 and "building" in payload["message"]
    gate.set()
    done = await settle(api, tid)
    assert done["status"] == "ready" and done["reason"] is None
    status, payload = await api.call("GET", f"/v1/templates/{tid}/logs")
    assert payload["data"]["lines"][:3] == [
        "STEP 1/3: FROM localhost/scalebox/base:latest",
        "STEP 2/3: RUN echo built > /opt/marker",
        "STEP 3/3: ENV GREETING=hello",
    ]
    status, payload = await api.call("GET", f"/v1/templates/{tid}/logs", query={"tail": "1"})
    assert len(payload["data"]["lines"]) == 1
    status, payload = await api.call("GET", f"/v1/templates/{tid}/logs", query={"tail": "0"})
    assert status == 400
    # The image carries the appliance's labels, so it can be found and cleaned up.
    labels = api.runtime.image_labels[made["image"]]
    assert labels == {"io.scalebox.managed": "true", "io.scalebox.instance": "test", "io.scalebox.template-id": tid}


async def test_build_failure_is_recorded(api: Api) -> None:  # noqa: F811
    api.runtime.fail_next("build", RuntimeFailure("the build failed: RUN false: exit status 1"))
    made = await build(api, name="broken")
    done = await settle(api, made["template_id"])
    assert done["status"] == "failed" and "exit status 1" in done["reason"]
    assert done["logs"][-1].startswith("failed: ")
    status, payload = await api.call("POST", "/v1/sandboxes", body={"template": "broken"})
    assert status == 409 and "exit status 1" in payload["message"]


async def test_from_must_name_a_local_template(api: Api) -> None:  # noqa: F811
    for text in ("FROM ubuntu:22.04\n", "FROM docker.io/library/debian\n", "FROM nope\nRUN true\n"):
        status, payload = await api.call("POST", "/v1/templates", body={"name": "x", "dockerfile": text})
        assert status == 400 and "FROM" in payload["message"] and "base" in payload["message"], payload
    status, payload = await api.call("POST", "/v1/templates", body={"name": "x", "dockerfile": "RUN true\n"})
    assert status == 400 and "no FROM" in payload["message"]
    status, payload = await api.call("POST", "/v1/templates", body={"name": "x"})
    assert status == 400 and "dockerfile" in payload["message"]
    status, payload = await api.call("POST", "/v1/templates", body={"name": "x", "dockerfile": "FROM $BASE\n"})
    assert status == 400 and "variable" in payload["message"]
    # Nothing was stored by the refusals.
    status, payload = await api.call("GET", "/v1/templates")
    assert payload["data"]["pagination"]["total"] == 3


async def test_from_own_template_by_name_and_stage(api: Api) -> None:  # noqa: F811
    parent = await ready_template(api, name="parent", cpu_count=2, start_cmd="python3 -m http.server 3000")
    text = "FROM parent AS one\nRUN true\nFROM one\nRUN true\n"
    child = await ready_template(api, name="child", dockerfile=text)
    _, payload = await api.call("GET", f"/v1/templates/{child['template_id']}/logs")
    assert f"STEP 1/4: FROM {parent['image']} AS one" in payload["data"]["lines"]
    assert "STEP 3/4: FROM one" in payload["data"]["lines"]
    # A single-stage build inherits its parent's settings.
    grandchild = await ready_template(api, name="grandchild", dockerfile="FROM parent\n")
    assert grandchild["default_cpu_count"] == 2 and grandchild["start_cmd"] == "python3 -m http.server 3000"


# -- names, CRUD, built-ins ------------------------------------------------------------------


async def test_name_rules(api: Api) -> None:  # noqa: F811
    for bad in ("", "Web", "1web", "-web", "web_app", "a" * 65, "base", "code-interpreter", "tpl-abc", 7):
        status, payload = await api.call("POST", "/v1/templates", body={"name": bad, "dockerfile": BUILD})
        assert status == 400 and "name" in payload["message"], (bad, payload)
    await build(api, name="a" * 64)
    await build(api, name="web-2")
    status, payload = await api.call("POST", "/v1/templates", body={"name": "web-2", "dockerfile": BUILD})
    assert status == 409 and "web-2" in payload["message"]
    status, payload = await api.call("POST", "/v1/templates", body={"name": "y", "dockerfile": BUILD, "bogus": 1})
    assert status == 400 and "bogus" in payload["message"]
    status, payload = await api.call("POST", "/v1/templates", body={"name": "y", "dockerfile": BUILD, "cpu_count": 99})
    assert status == 400 and "cpu_count" in payload["message"]


async def test_get_list_update_delete(api: Api) -> None:  # noqa: F811
    made = await ready_template(api, name="one")
    tid = made["template_id"]
    status, payload = await api.call("GET", "/v1/templates", query={"limit": "2", "offset": "2"})
    assert [t["template_id"] for t in payload["data"]["templates"]] == ["code-interpreter", tid]
    assert payload["data"]["pagination"]["total"] == 4
    for ref in (tid, "one"):
        status, payload = await api.call("GET", f"/v1/templates/{ref}")
        assert status == 200 and payload["data"]["template_id"] == tid
    update = {
        "name": "two",
        "description": "changed",
        "default_cpu_count": 2,
        "memory_mb": 1024,
        "ports": '[{"port": 3000, "name": "web"}]',
        "custom_command": "serve",
        "ready_command": "true",
    }
    status, payload = await api.call("PUT", f"/v1/templates/{tid}", body=update)
    assert status == 200, payload
    t = payload["data"]["template"]
    assert (t["name"], t["description"], t["default_cpu_count"], t["default_memory_mb"]) == ("two", "changed", 2, 1024)
    assert t["start_cmd"] == "serve" and t["ready_cmd"] == "true"
    assert t["ports"] == [{"port": 3000, "name": "web", "protocol": "http", "access": "public", "host_port": False}]
    status, payload = await api.call("PATCH", f"/v1/templates/{tid}", body={"ready_cmd": ""})
    assert payload["data"]["template"]["ready_cmd"] is None and payload["data"]["template"]["name"] == "two"
    status, payload = await api.call("GET", "/v1/templates/one")
    assert status == 404
    status, payload = await api.call("DELETE", f"/v1/templates/{tid}")
    assert status == 200 and payload["data"]["template_id"] == tid
    assert made["image"] not in api.runtime.images
    status, payload = await api.call("GET", f"/v1/templates/{tid}")
    assert status == 404
    status, payload = await api.call("DELETE", f"/v1/templates/{tid}")
    assert status == 404


async def test_builtins_are_read_only(api: Api) -> None:  # noqa: F811
    for method, body in (("PUT", {"description": "x"}), ("PATCH", {"name": "x"}), ("DELETE", None)):
        status, payload = await api.call(method, "/v1/templates/base", body=body)
        assert status == 403 and "built in" in payload["message"] and "read-only" in payload["message"]
    status, payload = await api.call("GET", "/v1/templates/base/status")
    assert payload["data"]["status"] == "ready" and payload["data"]["logs"] == []


async def test_delete_refused_while_used(api: Api) -> None:  # noqa: F811
    made = await ready_template(api, name="used")
    sid = (await api.create(template="used"))["sandbox_id"]
    status, payload = await api.call("DELETE", f"/v1/templates/{made['template_id']}")
    assert status == 409 and sid in payload["message"]
    assert made["image"] in api.runtime.images
    await api.call("DELETE", f"/v1/sandboxes/{sid}")
    status, payload = await api.call("DELETE", f"/v1/templates/{made['template_id']}")
    assert status == 200


async def test_delete_refused_while_building(api: Api) -> None:  # noqa: F811
    api.runtime.build_gate = trio.Event()
    made = await build(api, name="slow")
    status, payload = await api.call("DELETE", f"/v1/templates/{made['template_id']}")
    assert status == 409 and "building" in payload["message"]
    api.runtime.build_gate.set()
    await settle(api, made["template_id"])


# -- ownership -------------------------------------------------------------------------------


async def test_another_users_template_is_404(api: Api) -> None:  # noqa: F811
    other = other_user(api)
    mine = await ready_template(api, name="mine")
    tid = mine["template_id"]
    theirs = await ready_template(api, key=other, name="mine")  # the same name: names are per owner
    assert theirs["template_id"] != tid and theirs["owner_id"] == "usr-other"
    status, payload = await api.call("GET", "/v1/templates", key=other)
    assert [t["template_id"] for t in payload["data"]["templates"]][3:] == [theirs["template_id"]]
    for method, path, body in (
        ("GET", f"/v1/templates/{tid}", None),
        ("GET", f"/v1/templates/{tid}/status", None),
        ("GET", f"/v1/templates/{tid}/logs", None),
        ("PUT", f"/v1/templates/{tid}", {"description": "x"}),
        ("DELETE", f"/v1/templates/{tid}", None),
        ("POST", "/v1/sandboxes", {"template": tid}),
    ):
        status, payload = await api.call(method, path, body=body, key=other)
        assert status == 404, (method, path, payload)
    # Nor can they build on it.
    status, payload = await api.call(
        "POST", "/v1/templates", key=other, body={"name": "x", "dockerfile": f"FROM {tid}\n"}
    )
    assert status == 400
    # By name, each user gets their own.
    sbx = await api.create(template="mine")
    assert sbx["template_id"] == tid
    status, payload = await api.call("POST", "/v1/sandboxes", body={"template": "mine"}, key=other)
    assert status == 201 and payload["data"]["template_id"] == theirs["template_id"]
    # A commit of another user's sandbox is 404 too.
    status, payload = await api.call(
        "POST", f"/v1/sandboxes/{sbx['sandbox_id']}/create-template", body={"name": "stolen"}, key=other
    )
    assert status == 404


# -- what a template gives its sandboxes -----------------------------------------------------


async def test_defaults_and_ports_apply_at_create(api: Api) -> None:  # noqa: F811
    ports = [{"port": 3000, "name": "web"}, {"port": 5432, "name": "db", "protocol": "tcp"}]
    await ready_template(api, name="svc", cpu_count=2, memory_mb=1024, ports=ports, start_cmd="serve")
    sbx = await api.create(template="svc")
    assert (sbx["cpu_count"], sbx["memory_mb"]) == (2, 1024)
    [container] = api.runtime.containers.values()
    assert container.spec.env["SCALEBOX_START_CMD"] == "serve" and container.spec.memory_mb == 1024
    status, payload = await api.call("GET", f"/v1/sandboxes/{sbx['sandbox_id']}/ports")
    assert [p["port"] for p in payload["data"]["template_ports"]] == [3000, 5432]
    assert [p["port"] for p in payload["data"]["ports"]] == [3000, 5432]
    # What the client gives wins; a request port may redeclare a template port.
    sbx = await api.create(
        template="svc", cpu_count=1, memory_mb=256, custom_ports=[{"port": 3000, "name": "web", "access": "private"}]
    )
    assert (sbx["cpu_count"], sbx["memory_mb"]) == (1, 256)
    status, payload = await api.call("GET", f"/v1/sandboxes/{sbx['sandbox_id']}/ports")
    by_port = {p["port"]: p for p in payload["data"]["ports"]}
    assert by_port[3000]["access"] == "private" and set(by_port) == {3000, 5432}
    # A request port cannot take a template port's name.
    status, payload = await api.call(
        "POST", "/v1/sandboxes", body={"template": "svc", "custom_ports": [{"port": 1, "name": "db"}]}
    )
    assert status == 400 and "db" in payload["message"]
    # Built-ins have none.
    sbx = await api.create()
    status, payload = await api.call("GET", f"/v1/sandboxes/{sbx['sandbox_id']}/ports")
    assert payload["data"]["template_ports"] == [] and (sbx["cpu_count"], sbx["memory_mb"]) == (1, 512)


async def test_ready_cmd_gates_create(api: Api) -> None:  # noqa: F811
    await ready_template(api, name="slow-start", ready_cmd="curl -sf localhost:3000")
    runs: list[list[str]] = []

    def not_yet_then_ok(container: Any, command: list[str]) -> tuple[int, bytes]:
        runs.append(command)
        return (0, b"") if len(runs) >= 3 else (7, b"connection refused")

    api.runtime.exec_handler = not_yet_then_ok
    sbx = await api.create(template="slow-start")
    assert sbx["status"] == "running"
    assert runs == [["/bin/sh", "-c", "curl -sf localhost:3000"]] * 3


async def test_ready_cmd_that_never_succeeds_fails_the_create(api: Api) -> None:  # noqa: F811
    await ready_template(api, name="never", ready_cmd="false")
    api.service.config = replace(api.service.config, ready_timeout=0.3)
    api.runtime.exec_handler = lambda container, command: (1, b"nope")
    status, payload = await api.call("POST", "/v1/sandboxes", body={"template": "never"})
    assert status == 503 and "ready command" in payload["message"] and "nope" in payload["message"]
    # Nothing left behind.
    assert api.runtime.containers == {}


# -- commit ---------------------------------------------------------------------------------


async def test_commit_a_sandbox(api: Api) -> None:  # noqa: F811
    sbx = await api.create(env_vars={"SECRET": "x"})
    sid = sbx["sandbox_id"]
    status, payload = await api.call(
        "POST", f"/v1/sandboxes/{sid}/create-template", body={"name": "snap", "cpu_count": 2, "ready_command": "true"}
    )
    assert status == 200, payload
    tid = payload["data"]["template_id"]
    assert payload["data"]["source"] == "sandbox" and payload["data"]["status"] == "building"
    done = await settle(api, tid)
    assert done["status"] == "ready" and done["logs"][0] == f"committing the files of sandbox {sid}"
    [(_, tag, changes)] = api.runtime.commits
    assert tag == payload["data"]["image"]
    # The sandbox's own environment and id do not travel with the image.
    assert "ENV SECRET=" in changes and "ENV SCALEBOX_ACCESS_TOKEN=" in changes
    assert "LABEL io.scalebox.sandbox-id=" in changes
    new = await api.create(template="snap")
    assert new["template_id"] == tid and new["cpu_count"] == 2
    # A paused sandbox can be committed; a terminated one cannot.
    await api.call("POST", f"/v1/sandboxes/{sid}/pause")
    status, payload = await api.call("POST", f"/v1/sandboxes/{sid}/create-template", body={"name": "snap2"})
    assert status == 200 and (await settle(api, payload["data"]["template_id"]))["status"] == "ready"
    await api.call("DELETE", f"/v1/sandboxes/{sid}")
    status, payload = await api.call("POST", f"/v1/sandboxes/{sid}/create-template", body={"name": "snap3"})
    assert status == 409 and "terminated" in payload["message"]
    status, payload = await api.call("POST", f"/v1/sandboxes/{new['sandbox_id']}/create-template", body={})
    assert status == 400 and "name" in payload["message"]


# -- import ---------------------------------------------------------------------------------


async def test_import_from_a_host_path(api: Api, tmp_path: Path) -> None:  # noqa: F811
    archive = tmp_path / "image.tar"
    archive.write_bytes(b"not really a tar, the fake does not look")
    body = {"name": "imported", "archive_path": str(archive), "memory_mb": 256}
    status, payload = await api.call("POST", "/v1/templates/import", body=body)
    assert status == 202, payload
    assert (await settle(api, payload["data"]["template_id"]))["status"] == "ready"
    assert archive.exists(), "a host file is the admin's: it stays"
    sbx = await api.create(template="imported")
    assert sbx["memory_mb"] == 256
    for bad, why in (
        (str(tmp_path / "missing.tar"), "does not exist"),
        (str(tmp_path), "regular file"),
        ("rel.tar", "absolute"),
    ):
        status, payload = await api.call("POST", "/v1/templates/import", body={"name": "x", "archive_path": bad})
        assert status == 400 and why in payload["message"], payload
    # A host path is for admins only.
    other = other_user(api)
    status, payload = await api.call(
        "POST", "/v1/templates/import", key=other, body={"name": "x", "archive_path": str(archive)}
    )
    assert status == 403 and "upload" in payload["message"]


async def test_import_an_upload(api: Api) -> None:  # noqa: F811
    other = other_user(api)
    headers = {"Content-Type": "application/x-tar"}
    status, payload = await api.call(
        "POST",
        "/v1/templates/import",
        key=other,
        raw=b"x" * 2_000_000,
        headers=headers,
        query={"name": "up", "cpu_count": "2"},
    )
    assert status == 202, payload
    done = await settle(api, payload["data"]["template_id"], key=other)
    assert done["status"] == "ready"
    [(_, loaded)] = [c for c in api.runtime.calls if c[0] == "load"]
    assert not Path(loaded).exists(), "the uploaded archive is removed after the load"
    status, payload = await api.call("POST", "/v1/templates/import", raw=b"x", headers=headers)
    assert status == 400 and "name" in payload["message"]


async def test_import_failure_is_recorded(api: Api) -> None:  # noqa: F811
    api.runtime.fail_next("load", RuntimeFailure("the archive holds 2 images; save exactly one"))
    headers = {"Content-Type": "application/x-tar"}
    status, payload = await api.call("POST", "/v1/templates/import", raw=b"x", headers=headers, query={"name": "two"})
    assert status == 202
    done = await settle(api, payload["data"]["template_id"])
    assert done["status"] == "failed" and "2 images" in done["reason"]


# -- the store -------------------------------------------------------------------------------


async def test_build_log_is_bounded(api: Api) -> None:  # noqa: F811
    store = api.store.templates
    for i in range(MAX_LOG_LINES + 250):
        store.append_log("tpl-x", f"line {i}")
    lines = store.log_lines("tpl-x")
    assert len(lines) == MAX_LOG_LINES and lines[-1] == f"line {MAX_LOG_LINES + 249}"
    assert store.count_log_lines("tpl-x") <= MAX_LOG_LINES + 100


async def test_unfinished_builds_fail_on_restart(api: Api) -> None:  # noqa: F811
    api.runtime.build_gate = trio.Event()
    made = await build(api, name="interrupted")
    from controlplane.api.app import create_app

    # A second app on the same store is what a restart does.
    create_app(service=api.service, store=api.store, settings=_settings())
    _, payload = await api.call("GET", f"/v1/templates/{made['template_id']}")
    assert payload["data"]["status"] == "failed" and "restarted" in payload["data"]["reason"]
    api.runtime.build_gate.set()


def _settings() -> Any:
    from controlplane.api.app import ApiSettings
    from controlplane.api.schemas import HostLimits

    return ApiSettings(
        domain="sbx.localhost",
        public_port=8443,
        secret=b"s" * 32,
        limits=HostLimits(max_cpu_count=4, max_memory_mb=4096),
    )


async def test_log_tail_refuses_huge_numbers_clearly(api: Api) -> None:  # noqa: F811
    made = await build(api, name="tail-check")
    tid = made["template_id"]
    await settle(api, tid)
    for bad in ("0", "-1", "x", "000001" + "0" * 5000, "9999999"):
        status, payload = await api.call("GET", f"/v1/templates/{tid}/logs", query={"tail": bad})
        assert status == 400 and "tail" in payload["message"], bad
    status, payload = await api.call("GET", f"/v1/templates/{tid}/logs", query={"tail": "2"})
    assert status == 200 and len(payload["data"]["lines"]) == 2


async def test_builds_tell_their_owner_through_events(api: Api) -> None:  # noqa: F811
    ok = await build(api, name="told-ok")
    await settle(api, ok["template_id"])
    api.runtime.fail_next("build", RuntimeFailure("the build failed: RUN false: exit status 1"))
    bad = await build(api, name="told-bad")
    await settle(api, bad["template_id"])
    _, payload = await api.call("GET", "/v1/notifications")
    kinds = {(n["type"], n["subject_id"]) for n in payload["data"]["notifications"]}
    assert ("template.built", ok["template_id"]) in kinds
    assert ("template.failed", bad["template_id"]) in kinds
