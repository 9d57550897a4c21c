"""The /v1 API through Quart's test client, backed by FakeRuntime and a temporary store."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import trio
import trio.testing
from quart_trio import QuartTrio

from controlplane.api.app import MAX_BODY, ApiSettings, create_app
from controlplane.api.schemas import HostLimits
from controlplane.apikeys import ensure_admin_key
from controlplane.lifecycle import service as service_module
from controlplane.lifecycle.service import LifecycleConfig, SandboxService
from controlplane.runtime.fake import FakeRuntime
from controlplane.store import Store
from controlplane.tokens import verify_access_token

SECRET = b"s" * 32
DOMAIN = "sbx.localhost"


@dataclass
class Api:
    app: QuartTrio
    key: str
    runtime: FakeRuntime
    store: Store
    service: SandboxService

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        raw: bytes | None = None,
        key: str | None = "default",
        headers: dict[str, str] | None = None,
        query: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        all_headers = dict(headers or {})
        if key == "default":
            all_headers["X-API-KEY"] = self.key
        elif key is not None:
            all_headers["X-API-KEY"] = key
        client = self.app.test_client()
        kwargs: dict[str, Any] = {"headers": all_headers}
        if query is not None:
            kwargs["query_string"] = query
        if raw is not None:
            kwargs["data"] = raw
        elif body is not None:
            kwargs["json"] = body
        response = await client.open(path, method=method, **kwargs)
        text = await response.get_data(as_text=True)
        assert response.status_code != 500, text
        assert response.content_type == "application/json", text
        payload = json.loads(text)
        check_envelope(response.status_code, payload)
        return response.status_code, payload

    async def create(self, **body: Any) -> dict[str, Any]:
        status, payload = await self.call("POST", "/v1/sandboxes", body=body)
        assert status == 201, payload
        data: dict[str, Any] = payload["data"]
        return data


def check_envelope(status: int, payload: dict[str, Any]) -> None:
    assert isinstance(payload, dict)
    if status < 400:
        assert payload["success"] is True
        assert "data" in payload
        assert isinstance(payload["message"], str)
        datetime.fromisoformat(payload["timestamp"].replace("Z", "+00:00"))
    else:
        assert payload["success"] is False
        assert isinstance(payload["error"], str) and payload["error"]
        assert isinstance(payload["message"], str) and payload["message"]


@pytest.fixture
async def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nursery: trio.Nursery) -> AsyncIterator[Api]:
    async def healthy(ip: str, port: int, *, deadline: float, **_: Any) -> bool:
        await trio.lowlevel.checkpoint()
        return True

    monkeypatch.setattr(service_module, "wait_until_healthy", healthy)
    store = Store(tmp_path / "db.sqlite")
    key = ensure_admin_key(store, tmp_path / "admin.key")
    assert key is not None
    runtime = FakeRuntime()
    service = SandboxService(
        store=store,
        runtime=runtime,
        config=LifecycleConfig(instance_id="test", agent_dir=tmp_path, reap_interval=3600),
    )
    await nursery.start(service.run)
    settings = ApiSettings(
        domain=DOMAIN,
        public_port=8443,
        secret=SECRET,
        limits=HostLimits(max_cpu_count=4, max_memory_mb=4096),
    )
    app = create_app(service=service, store=store, settings=settings)
    yield Api(app=app, key=key, runtime=runtime, store=store, service=service)
    store.close()


# -- envelope and auth --------------------------------------------------------------------


async def test_regions_need_no_key(api: Api) -> None:
    status, payload = await api.call("GET", "/v1/scalebox-regions", key=None)
    assert status == 200
    assert payload["data"]["scalebox_regions"][0]["id"] == "local"


async def test_health_needs_no_key(api: Api) -> None:
    status, payload = await api.call("GET", "/health", key=None)
    assert (status, payload["data"]) == (200, {"status": "ok"})


@pytest.mark.parametrize(
    ("key", "code"),
    [(None, "missing_api_key"), ("", "missing_api_key"), ("sk-wrong", "invalid_api_key")],
)
async def test_missing_or_wrong_key_is_401(api: Api, key: str | None, code: str) -> None:
    for method, path in [("GET", "/v1/sandboxes"), ("POST", "/v1/sandboxes"), ("GET", "/v1/sandboxes/sbx-x")]:
        status, payload = await api.call(method, path, key=key)
        assert status == 401
        assert payload["error"] == "unauthorized"
        assert payload["code"] == code
    assert api.runtime.containers == {}


@pytest.mark.parametrize("name", ["x-api-key", "X-Api-Key", "X-API-KEY"])
async def test_key_header_name_is_case_insensitive(api: Api, name: str) -> None:
    status, _ = await api.call("GET", "/v1/sandboxes", key=None, headers={name: api.key})
    assert status == 200


async def test_bearer_and_access_token_headers_are_ignored(api: Api) -> None:
    headers = {"Authorization": "Bearer root", "X-Access-Token": "whatever"}
    assert (await api.call("GET", "/v1/sandboxes", headers=headers))[0] == 200
    assert (await api.call("GET", "/v1/sandboxes", key=None, headers=headers))[0] == 401


async def test_request_id_is_echoed(api: Api) -> None:
    client = api.app.test_client()
    response = await client.get("/v1/sandboxes/sbx-nope", headers={"X-API-KEY": api.key, "X-Request-Id": "abc123"})
    assert response.headers["X-Request-Id"] == "abc123"
    payload = await response.get_json()
    assert payload["request_id"] == "abc123"


async def test_unknown_route_is_404_envelope(api: Api) -> None:
    status, payload = await api.call("GET", "/v1/nothing-here")
    assert status == 404
    assert "/v1/nothing-here" in payload["message"]


async def test_wrong_method_is_405_envelope(api: Api) -> None:
    status, payload = await api.call("PATCH", "/v1/sandboxes")
    assert status == 405
    assert "PATCH" in payload["message"]
    status, _ = await api.call("GET", "/v1/sandboxes/sbx-x/pause")
    assert status == 405


async def test_body_over_one_mib_is_413_envelope(api: Api) -> None:
    big = json.dumps({"metadata": {"k": "v" * MAX_BODY}}).encode()
    status, payload = await api.call("POST", "/v1/sandboxes", raw=big, headers={"Content-Type": "application/json"})
    assert status == 413
    assert str(MAX_BODY) in payload["message"]
    assert api.runtime.containers == {}


# -- create: bad input --------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b"{'a': 1}",
        b"not json",
        b'{"timeout": 300,}',
        b"\xff\xfe\x00\x01",
        b'{"name": "\xe9"}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"timeout": ' + b"1" * 5000 + b"}",  # int() refuses > 4300 digits
    ],
)
async def test_malformed_body_is_400(api: Api, raw: bytes) -> None:
    status, payload = await api.call("POST", "/v1/sandboxes", raw=raw, headers={"Content-Type": "application/json"})
    assert status == 400
    assert payload["code"] == "invalid_json"
    assert api.runtime.containers == {}


async def test_non_utf8_body_names_the_byte(api: Api) -> None:
    status, payload = await api.call("POST", "/v1/sandboxes", raw=b'{"a": "\xff"}')
    assert status == 400
    assert "UTF-8" in payload["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        ("x", "body"),
        ({"timeout": "300"}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": 10**20}, "timeout"),
        ({"timeout": 1e308}, "timeout"),
        ({"timeout": 300.5}, "timeout"),
        ({"memory_mb": 64}, "memory_mb"),
        ({"memory_mb": 1 << 40}, "memory_mb"),
        ({"memory_mb": -512}, "memory_mb"),
        ({"cpu_count": 64}, "cpu_count"),
        ({"metadata": {"a": 1}}, "metadata"),
        ({"metadata": [1]}, "metadata"),
        ({"env_vars": {"1BAD": "x"}}, "env_vars"),
        ({"custom_ports": [{"port": 70000, "name": "x"}]}, "port"),
        ({"is_async": "yes"}, "is_async"),
        ({"locality": {"region": "eu"}}, "locality"),
        ({"template": 7}, "template"),
    ],
)
async def test_bad_create_fields_are_400_naming_the_field(api: Api, body: Any, field: str) -> None:
    status, payload = await api.call("POST", "/v1/sandboxes", body=body)
    assert status == 400
    assert payload["error"] == "bad_request"
    assert field in payload["message"]
    assert api.runtime.containers == {}
    assert api.store.count_api_keys() == 1


async def test_nan_and_infinity_are_refused(api: Api) -> None:
    for raw in (b'{"timeout": NaN}', b'{"timeout": Infinity}', b'{"memory_mb": -Infinity}'):
        status, _ = await api.call("POST", "/v1/sandboxes", raw=raw)
        assert status == 400


async def test_unknown_template_is_404(api: Api) -> None:
    status, payload = await api.call("POST", "/v1/sandboxes", body={"template": "does-not-exist"})
    assert status == 404
    assert payload["code"] == "template_not_found"
    assert "base" in payload["message"]


async def test_missing_image_is_503(api: Api) -> None:
    api.runtime.images.clear()
    status, payload = await api.call("POST", "/v1/sandboxes", body={})
    assert status == 503
    assert payload["code"] == "image_missing"


# -- create and read ----------------------------------------------------------------------


async def test_create_with_nulls_and_defaults(api: Api) -> None:
    body = {
        "template": None,
        "timeout": None,
        "metadata": None,
        "env_vars": None,
        "cpu_count": None,
        "memory_mb": None,
        "allow_internet_access": None,
        "auto_pause": None,
        "secure": None,
        "custom_ports": None,
        "is_async": None,
        "object_storage": None,
    }
    status, payload = await api.call("POST", "/v1/sandboxes", body=body)
    assert status == 201
    data = payload["data"]
    assert data["status"] == "running"
    assert data["template_id"] == "base"
    assert data["timeout"] == 300
    assert (data["cpu_count"], data["memory_mb"]) == (1, 512)


async def test_create_with_empty_body(api: Api) -> None:
    status, payload = await api.call("POST", "/v1/sandboxes")
    assert status == 201
    assert payload["data"]["status"] == "running"


async def test_created_sandbox_has_what_the_sdk_needs(api: Api) -> None:
    data = await api.create(timeout=600, metadata={"owner": "me"}, cpu_count=2, memory_mb=1024)
    sid = data["sandbox_id"]
    assert sid.startswith("sbx-")
    assert data["status"] == "running"
    assert data["sandbox_domain"] == f"{sid}.{DOMAIN}:8443"
    assert verify_access_token(SECRET, sid, data["envd_access_token"])
    assert data["started_at"] is not None
    assert data["created_at"] is not None
    assert (data["timeout"], data["cpu_count"], data["memory_mb"]) == (600, 2, 1024)
    assert data["metadata"] == {"owner": "me"}

    status, payload = await api.call("GET", f"/v1/sandboxes/{sid}")
    assert status == 200
    assert payload["data"]["sandbox_id"] == sid
    assert payload["data"]["envd_access_token"] == data["envd_access_token"]

    status, payload = await api.call("GET", f"/v1/sandboxes/{sid}/status")
    assert (status, payload["data"]["status"]) == (200, "running")


async def test_async_create(api: Api) -> None:
    status, payload = await api.call("POST", "/v1/sandboxes", body={"is_async": True})
    assert status == 201
    sid = payload["data"]["sandbox_id"]
    assert payload["data"]["state"] == "starting"
    await trio.testing.wait_all_tasks_blocked()
    status, payload = await api.call("GET", f"/v1/sandboxes/{sid}/status")
    assert payload["data"]["status"] == "running"


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("GET", ""),
        ("DELETE", ""),
        ("GET", "/status"),
        ("POST", "/pause"),
        ("POST", "/resume"),
        ("POST", "/connect"),
        ("POST", "/timeout"),
        ("PUT", "/timeout"),
        ("GET", "/metrics"),
    ],
)
async def test_unknown_sandbox_is_404(api: Api, method: str, suffix: str) -> None:
    body = {"timeout": 60} if suffix == "/timeout" else None
    status, payload = await api.call(method, f"/v1/sandboxes/sbx-doesnotexist{suffix}", body=body)
    assert status == 404
    assert payload["code"] == "sandbox_not_found"
    assert "sbx-doesnotexist" in payload["message"]


# -- pause, resume, delete ----------------------------------------------------------------


async def test_pause_twice_is_409_and_resume(api: Api) -> None:
    sid = (await api.create())["sandbox_id"]
    status, payload = await api.call("POST", f"/v1/sandboxes/{sid}/pause")
    assert (status, payload["data"]["status"]) == (200, "paused")
    status, payload = await api.call("POST", f"/v1/sandboxes/{sid}/pause")
    assert status == 409
    assert payload["error"] == "conflict"
    assert payload["code"] == "already_paused"
    status, payload = await api.call("POST", f"/v1/sandboxes/{sid}/resume", body={"timeout": 120})
    assert (status, payload["data"]["status"], payload["data"]["timeout"]) == (200, "running", 120)
    # Resuming a running sandbox answers it as it is (connect semantics).
    status, payload = await api.call("POST", f"/v1/sandboxes/{sid}/resume")
    assert (status, payload["data"]["status"]) == (200, "running")
    await api.call("DELETE", f"/v1/sandboxes/{sid}")
    status, payload = await api.call("POST", f"/v1/sandboxes/{sid}/resume")
    assert status == 409


async def test_connect_resumes_a_paused_sandbox(api: Api) -> None:
    sid = (await api.create())["sandbox_id"]
    await api.call("POST", f"/v1/sandboxes/{sid}/pause", body={"is_async": False})
    status, payload = await api.call("POST", f"/v1/sandboxes/{sid}/connect", body={"timeout": 90})
    assert (status, payload["data"]["status"], payload["data"]["timeout"]) == (200, "running", 90)
    status, payload = await api.call("POST", f"/v1/sandboxes/{sid}/connect")
    assert (status, payload["data"]["status"]) == (200, "running")


async def test_delete_is_202_and_idempotent(api: Api) -> None:
    sid = (await api.create())["sandbox_id"]
    status, payload = await api.call("DELETE", f"/v1/sandboxes/{sid}", query={"force": "true"})
    assert status == 202
    assert payload["data"]["status"] == "terminated"
    assert api.runtime.containers == {}
    status, _ = await api.call("DELETE", f"/v1/sandboxes/{sid}")
    assert status == 202
    status, payload = await api.call("GET", f"/v1/sandboxes/{sid}")
    assert (status, payload["data"]["status"]) == (200, "terminated")
    status, payload = await api.call("POST", f"/v1/sandboxes/{sid}/pause")
    assert status == 409


# -- timeout ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT"])
async def test_set_timeout_reply(api: Api, method: str) -> None:
    sid = (await api.create(timeout=60))["sandbox_id"]
    before = time.time()
    status, payload = await api.call(method, f"/v1/sandboxes/{sid}/timeout", body={"timeout": 1000})
    assert status == 200
    data = payload["data"]
    assert set(data) >= {"timeout", "timeout_at", "used_lifetime", "remaining_time"}
    assert data["timeout"] == 1000
    assert 0 <= data["used_lifetime"] <= 5
    assert 995 <= data["remaining_time"] <= 1000
    timeout_at = datetime.fromisoformat(data["timeout_at"].replace("Z", "+00:00")).timestamp()
    assert before + 1000 - 1 <= timeout_at <= time.time() + 1000 + 1
    status, payload = await api.call("GET", f"/v1/sandboxes/{sid}")
    assert payload["data"]["timeout"] == 1000


@pytest.mark.parametrize(
    "body", [None, {}, {"timeout": None}, {"timeout": -1}, {"timeout": 0}, {"timeout": 10**9}, {"timeout": "60"}]
)
async def test_set_timeout_bad_values_are_400(api: Api, body: Any) -> None:
    sid = (await api.create())["sandbox_id"]
    status, payload = await api.call("POST", f"/v1/sandboxes/{sid}/timeout", body=body)
    assert status == 400
    assert "timeout" in payload["message"]


# -- list ---------------------------------------------------------------------------------


def sdk_metadata(metadata: dict[str, str]) -> str:
    return urlencode({quote(k): quote(v) for k, v in metadata.items()})


async def test_list_pagination(api: Api) -> None:
    created = [(await api.create())["sandbox_id"] for _ in range(5)]
    status, payload = await api.call("GET", "/v1/sandboxes", query={"limit": "2", "page": "2"})
    assert status == 200
    assert payload["data"]["pagination"] == {"page": 2, "limit": 2, "total": 5, "total_pages": 3, "offset": 2}
    assert len(payload["data"]["sandboxes"]) == 2
    seen: list[str] = []
    for page in (1, 2, 3):
        _, payload = await api.call("GET", "/v1/sandboxes", query={"limit": "2", "page": str(page)})
        seen += [s["sandbox_id"] for s in payload["data"]["sandboxes"]]
    assert sorted(seen) == sorted(created)
    assert len(seen) == 5


async def test_list_hides_terminated_by_default(api: Api) -> None:
    keep = (await api.create())["sandbox_id"]
    gone = (await api.create())["sandbox_id"]
    await api.call("DELETE", f"/v1/sandboxes/{gone}")
    _, payload = await api.call("GET", "/v1/sandboxes")
    assert [s["sandbox_id"] for s in payload["data"]["sandboxes"]] == [keep]
    _, payload = await api.call("GET", "/v1/sandboxes", query={"status": "terminated"})
    assert [s["sandbox_id"] for s in payload["data"]["sandboxes"]] == [gone]
    assert {s["status"] for s in payload["data"]["sandboxes"]} <= {"running", "paused", "terminated"}


async def test_list_metadata_filter_as_the_sdk_sends_it(api: Api) -> None:
    a = (await api.create(metadata={"team name": "core/infra", "env": "prod"}))["sandbox_id"]
    await api.create(metadata={"team name": "web", "env": "prod"})
    await api.create()
    status, payload = await api.call(
        "GET", "/v1/sandboxes", query={"metadata": sdk_metadata({"team name": "core/infra", "env": "prod"})}
    )
    assert status == 200
    assert [s["sandbox_id"] for s in payload["data"]["sandboxes"]] == [a]
    assert payload["data"]["pagination"]["total"] == 1
    _, payload = await api.call("GET", "/v1/sandboxes", query={"metadata": sdk_metadata({"env": "prod"})})
    assert payload["data"]["pagination"]["total"] == 2


@pytest.mark.parametrize(
    "query",
    [
        {"limit": "0"},
        {"limit": "abc"},
        {"page": "-1"},
        {"offset": "x"},
        {"limit": "²"},
        {"offset": "9" * 5000},
        {"status": "bogus"},
        {"metadata": "novalue"},
    ],
)
async def test_list_bad_query_is_400(api: Api, query: dict[str, str]) -> None:
    status, payload = await api.call("GET", "/v1/sandboxes", query=query)
    assert status == 400
    assert payload["code"] == "invalid_query"


# -- metrics ------------------------------------------------------------------------------


async def test_metrics(api: Api) -> None:
    sid = (await api.create(memory_mb=256))["sandbox_id"]
    now_ms = str(int(time.time() * 1000))
    status, payload = await api.call(
        "GET", f"/v1/sandboxes/{sid}/metrics", query={"start": str(int(now_ms) - 60_000), "end": now_ms}
    )
    assert status == 200
    [item] = payload["data"]["metrics"]
    assert set(item) >= {"timestamp", "cpu_count", "cpu_used_pct", "disk_total", "disk_used", "mem_total", "mem_used"}
    assert item["mem_total"] == 256 * 1024 * 1024
    status, payload = await api.call("GET", f"/v1/sandboxes/{sid}/metrics", query={"start": "2020-01-01T00:00:00Z"})
    assert status == 200
    assert len(payload["data"]["metrics"]) == 1


@pytest.mark.parametrize("start", ["yesterday", "²", "9" * 5000, "1.5"])
async def test_metrics_bad_time_is_400(api: Api, start: str) -> None:
    sid = (await api.create())["sandbox_id"]
    status, payload = await api.call("GET", f"/v1/sandboxes/{sid}/metrics", query={"start": start})
    assert status == 400
    assert "start" in payload["message"]


# -- nothing answers 500 ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "raw"),
    [
        ("POST", "/v1/sandboxes", b"null"),
        ("POST", "/v1/sandboxes", b"0"),
        ("POST", "/v1/sandboxes", b'"\\ud800"'),
        ("POST", "/v1/sandboxes", b'{"metadata": {"\\u0000": "x"}}'),
        ("POST", "/v1/sandboxes", b'{"custom_ports": [[]]}'),
        ("POST", "/v1/sandboxes", b'{"custom_ports": [{"port": 1, "name": "a", "protocol": []}]}'),
        ("POST", "/v1/sandboxes", b'{"custom_ports": [{"port": 1, "name": "a", "protocol": {"x": 1}}]}'),
        ("POST", "/v1/sandboxes", b'{"template": "\\u0000"}'),
        ("POST", "/v1/sandboxes", b'{"template_id": "tpl-"}'),
        ("POST", "/v1/sandboxes", b'{"locality": {"a": []}}'),
        ("POST", "/v1/sandboxes/sbx-x/timeout", b"[]"),
        ("PUT", "/v1/sandboxes/sbx-x/timeout", b'{"timeout": 1e999}'),
        ("POST", "/v1/sandboxes/sbx-x/pause", b"[1]"),
        ("POST", "/v1/sandboxes/sbx-x/resume", b'{"timeout": {}}'),
        ("POST", "/v1/sandboxes/sbx-x/connect", b"\xff"),
        ("GET", "/v1/sandboxes/%00", b""),
        ("GET", "/v1/sandboxes/" + "x" * 5000, b""),
        ("DELETE", "/v1/sandboxes", b""),
    ],
)
async def test_nothing_answers_500(api: Api, method: str, path: str, raw: bytes) -> None:
    status, _ = await api.call(method, path, raw=raw)  # call() asserts != 500 and the envelope
    assert status < 500
