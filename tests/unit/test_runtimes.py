"""The sandbox runtime choice (runc or gvisor): parsing, templates, the row, the spec,
Podman's create arguments, the warm pool, and finding out whether runsc is installed.
Under real Podman and runsc: tests/e2e/test_gvisor.py."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from podman import api as podman_api
from podman.domain.containers_create import CreateMixin

from controlplane.api.schemas import HostLimits, parse_create, sandbox_json
from controlplane.errors import BadRequest, Unavailable
from controlplane.lifecycle.service import SandboxService
from controlplane.lifecycle.states import State
from controlplane.records import SandboxRecord
from controlplane.runtime.base import GVISOR, RUNC, RUNTIMES, ContainerSpec, RuntimeFailure
from controlplane.runtime.podman_runtime import GVISOR_OCI_RUNTIME, PodmanRuntime, create_arguments
from controlplane.runtime.service import available_runtimes, default_containers_conf, runsc_paths
from controlplane.store import Store
from controlplane.templates import BUILTIN, resolve
from tests.unit.test_api import Api, api  # noqa: F401 - the fixture
from tests.unit.test_lifecycle import Env, all_rows, env, request  # noqa: F401 - the fixture
from tests.unit.test_schemas import NOW, exposure, record
from tests.unit.test_warm_pool import Env as PoolEnv
from tests.unit.test_warm_pool import env as pool_env  # noqa: F401 - the fixture
from tests.unit.test_warm_pool import request as pool_request

REPO = Path(__file__).resolve().parents[2]
LIMITS = HostLimits(max_cpu_count=4, max_memory_mb=8192)
BOTH = frozenset(RUNTIMES)

# -- the request --------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "runtime"), [({}, None), ({"runtime": None}, None)] + [
    ({"runtime": name}, name) for name in RUNTIMES
])  # fmt: skip
def test_parse_create_runtime(body: dict[str, Any], runtime: str | None) -> None:
    assert parse_create(body, LIMITS).runtime == runtime


@pytest.mark.parametrize("value", ["kata", "GVISOR", "runsc", "", "gvisor ", 5, True, ["gvisor"], {"name": "gvisor"}])
def test_parse_create_unknown_runtime_is_a_clear_400(value: Any) -> None:
    with pytest.raises(BadRequest) as info:
        parse_create({"runtime": value}, LIMITS)
    assert info.value.status == 400
    assert "runtime must be one of runc, gvisor" in info.value.message


def test_sandbox_json_shows_the_runtime() -> None:
    assert sandbox_json(record(), exposure(), NOW)["runtime"] == RUNC
    assert sandbox_json(record(runtime=GVISOR), exposure(), NOW)["runtime"] == GVISOR


# -- templates ----------------------------------------------------------------------------


def test_templates_default_to_runc_and_base_gvisor_to_gvisor() -> None:
    assert {t.id: t.runtime for t in BUILTIN.values()} == {
        "base": RUNC,
        "code-interpreter": RUNC,
        "base-gvisor": GVISOR,
    }
    assert resolve("tpl-base-gvisor").image == resolve("base").image


# -- the row ------------------------------------------------------------------------------


def test_store_keeps_the_runtime(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    store.put_sandbox(record(runtime=GVISOR))
    got = store.get_sandbox(record().id)
    assert got is not None and got.runtime == GVISOR
    store.close()


def test_rows_from_before_runtimes_read_as_runc(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    store = Store(path)
    store.put_sandbox(record(runtime=GVISOR))
    store.close()
    # A data dir written by an appliance that had no runtime column.
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE sandboxes DROP COLUMN runtime")
    db.commit()
    db.close()
    store = Store(path)
    got = store.get_sandbox(record().id)
    assert got is not None and got.runtime == RUNC
    store.close()


# -- the lifecycle service ------------------------------------------------------------------


def with_runtimes(env: Env, runtimes: frozenset[str]) -> SandboxService:  # noqa: F811
    config = replace(env.service.config, runtimes=runtimes)
    return SandboxService(store=env.store, runtime=env.runtime, config=config, clock=env.clock)


def spec_of(env: Env, rec: SandboxRecord) -> ContainerSpec:  # noqa: F811
    assert rec.container_id is not None
    spec: ContainerSpec = env.runtime.containers[rec.container_id].spec
    return spec


@pytest.mark.parametrize(
    ("changes", "runtime"),
    [
        ({}, RUNC),
        ({"runtime": RUNC}, RUNC),
        ({"runtime": GVISOR}, GVISOR),
        ({"template": "base-gvisor"}, GVISOR),
        ({"template": "base-gvisor", "runtime": RUNC}, RUNC),
    ],
)
async def test_the_runtime_reaches_the_row_and_the_spec(
    env: Env,  # noqa: F811
    changes: dict[str, Any],
    runtime: str,
) -> None:
    service = with_runtimes(env, BOTH)
    rec = await service.create(request(**changes))
    assert rec.state is State.RUNNING and rec.runtime == runtime
    assert env.store.get_sandbox(rec.id) == rec
    # runc is the engine's default: no runtime in the spec, as before runtimes existed.
    assert spec_of(env, rec).runtime == (None if runtime == RUNC else runtime)


@pytest.mark.parametrize("changes", [{"runtime": GVISOR}, {"template": "base-gvisor"}])
async def test_gvisor_without_runsc_is_a_clear_503_that_leaves_nothing(
    env: Env,  # noqa: F811
    changes: dict[str, Any],
) -> None:
    with pytest.raises(Unavailable) as info:
        await env.service.create(request(**changes))
    assert info.value.status == 503 and info.value.code == "runtime_unavailable"
    assert "gvisor" in info.value.message and "make setup" in info.value.message
    assert all_rows(env.store) == [] and env.runtime.containers == {}
    assert [op for op, _ in env.runtime.calls if op == "create"] == []


async def test_a_runc_pool_never_serves_gvisor(pool_env: PoolEnv) -> None:  # noqa: F811
    service = pool_env.new_service({"base": 2}, runtimes=BOTH)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await trio.testing.wait_all_tasks_blocked()
        pooled = [w.sandbox_id for w in service.pool._ready["base"]]
        assert len(pooled) == 2

        gvisor = await service.create(pool_request(runtime=GVISOR))
        assert gvisor.id not in pooled and gvisor.runtime == GVISOR
        assert pool_env.spec_of(gvisor).runtime == GVISOR
        # runc, named or not, is what the pool holds.
        for changes in ({}, {"runtime": RUNC}):
            taken = await service.create(pool_request(**changes))
            assert taken.id in pooled and taken.runtime == RUNC
        nursery.cancel_scope.cancel()


async def test_a_gvisor_template_pool_serves_its_template(pool_env: PoolEnv) -> None:  # noqa: F811
    service = pool_env.new_service({"base-gvisor": 1}, runtimes=BOTH)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await trio.testing.wait_all_tasks_blocked()
        [warm] = service.pool._ready["base-gvisor"]
        assert pool_env.runtime.containers[warm.container_id].spec.runtime == GVISOR
        assert (await service.create(pool_request(template="base", runtime=GVISOR))).id != warm.sandbox_id
        taken = await service.create(pool_request(template="base-gvisor"))
        assert taken.id == warm.sandbox_id and taken.runtime == GVISOR
        nursery.cancel_scope.cancel()


# -- the API ------------------------------------------------------------------------------


async def test_api_create_with_a_runtime(api: Api) -> None:  # noqa: F811
    status, payload = await api.call("POST", "/v1/sandboxes", body={"runtime": "kata"})
    assert status == 400 and "runtime must be one of" in payload["message"]
    status, payload = await api.call("POST", "/v1/sandboxes", body={"runtime": "gvisor"})
    assert status == 503 and "not installed" in payload["message"]
    assert (await api.create())["runtime"] == RUNC

    api.service.config = replace(api.service.config, runtimes=BOTH)
    created = await api.create(runtime="gvisor")
    assert created["runtime"] == GVISOR
    status, payload = await api.call("GET", f"/v1/sandboxes/{created['sandbox_id']}")
    assert status == 200 and payload["data"]["runtime"] == GVISOR
    status, payload = await api.call("GET", "/v1/templates/base-gvisor")
    assert status == 200 and payload["data"]["runtime"] == GVISOR


# -- Podman's create arguments --------------------------------------------------------------


def spec(**changes: Any) -> ContainerSpec:
    return ContainerSpec(name="scalebox-sbx-1", image="localhost/scalebox/base", command=["true"], **changes)


def body(s: ContainerSpec) -> dict[str, Any]:
    """The JSON podman-py sends to `POST /containers/create`."""
    payload = CreateMixin._render_payload({"image": s.image, "command": s.command, **create_arguments(s)})
    rendered: dict[str, Any] = json.loads(podman_api.prepare_body(payload))
    return rendered


def test_gvisor_runs_on_runsc_without_a_podman_user_namespace() -> None:
    runc, gvisor = body(spec()), body(spec(runtime=GVISOR))
    assert gvisor["oci_runtime"] == GVISOR_OCI_RUNTIME == "runsc"
    assert "oci_runtime" not in runc
    # runsc 20221219 cannot start inside one (see create_arguments).
    for key in ("userns", "idmappings"):
        assert key not in gvisor
    # Everything else is the same container.
    same = {k: v for k, v in runc.items() if k not in ("userns", "idmappings")}
    assert {k: v for k, v in gvisor.items() if k != "oci_runtime"} == same


def test_an_unknown_runtime_in_a_spec_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown runtime"):
        create_arguments(spec(runtime="kata"))


# -- is runsc installed? ------------------------------------------------------------------


def conf_naming(tmp_path: Path, program: str | None) -> Path:
    conf = tmp_path / "containers.conf"
    section = f'[engine.runtimes]\nrunsc = ["{program}"]\n' if program else ""
    conf.write_text(f'[engine]\nruntime = "runc"\n\n{section}')
    return conf


def script(tmp_path: Path, exit_code: int) -> str:
    path = tmp_path / "runsc"
    path.write_text(f"#!/bin/sh\necho 'runsc version test'\nexit {exit_code}\n")
    path.chmod(0o755)
    return str(path)


async def test_available_runtimes_runs_the_named_runsc(tmp_path: Path) -> None:
    assert await available_runtimes(conf_naming(tmp_path, script(tmp_path, 0))) == BOTH
    assert await available_runtimes(conf_naming(tmp_path, script(tmp_path, 1))) == {RUNC}


async def test_available_runtimes_without_runsc(tmp_path: Path) -> None:
    assert await available_runtimes(conf_naming(tmp_path, str(tmp_path / "missing"))) == {RUNC}
    assert await available_runtimes(conf_naming(tmp_path, None)) == {RUNC}
    broken = tmp_path / "broken.conf"
    broken.write_text("[engine\n")
    assert await available_runtimes(broken) == {RUNC}
    assert await available_runtimes(tmp_path / "absent.conf") == {RUNC}


def test_setup_installs_the_wrapper_where_containers_conf_looks() -> None:
    [path] = runsc_paths(default_containers_conf())
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert f"runsc_wrapper={path}\n" in setup
    assert '"$repo/podman/runsc-wrapper.sh"' in setup
    assert (REPO / "podman" / "runsc-wrapper.sh").stat().st_mode & 0o111


async def test_a_driver_without_a_gvisor_service_refuses_gvisor_creates() -> None:
    driver = PodmanRuntime("unix:///nonexistent/podman.sock")
    with pytest.raises(RuntimeFailure, match="gvisor"):
        await driver.create(spec(runtime=GVISOR))
