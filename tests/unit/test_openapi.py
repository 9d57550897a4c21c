"""The OpenAPI document (controlplane/api/openapi.yaml) says what the app really routes.

The document is hand-written; these tests keep it honest: the same (method, path)
pairs as the app's url_map, a valid OpenAPI document, errors documented where the
routes raise them, and served without a key at /v1/openapi.json and .yaml.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import yaml
from openapi_spec_validator import validate
from quart_trio import QuartTrio
from schemathesis.core.result import Err

from controlplane.api import openapi
from controlplane.api.app import ApiSettings, create_app
from controlplane.api.schemas import HostLimits
from controlplane.apikeys import ensure_admin_key
from controlplane.lifecycle.service import LifecycleConfig, SandboxService
from controlplane.runtime.fake import FakeRuntime
from controlplane.store import Store

METHODS = frozenset({"get", "put", "post", "delete", "patch"})
# Public operations that take no input at all: nothing a caller sends can be wrong, so
# they have no 4xx to document (every other operation must document one).
NO_INPUT_PUBLIC = frozenset({"/health", "/v1/scalebox-regions", "/v1/openapi.json", "/v1/openapi.yaml"})


@pytest.fixture
def app(tmp_path: Path) -> QuartTrio:
    # The app is only routed and asked for public documents: the service need not run.
    store = Store(tmp_path / "db.sqlite")
    ensure_admin_key(store, tmp_path / "admin.key")
    service = SandboxService(
        store=store,
        runtime=FakeRuntime(),
        config=LifecycleConfig(instance_id="test", agent_dir=tmp_path, reap_interval=3600),
    )
    settings = ApiSettings(
        domain="sbx.localhost",
        public_port=8443,
        secret=b"s" * 32,
        limits=HostLimits(max_cpu_count=4, max_memory_mb=4096),
    )
    return create_app(service=service, store=store, settings=settings)


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    loaded = yaml.safe_load(openapi.DOCUMENT.read_text())
    assert isinstance(loaded, dict)
    return loaded


def operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): op
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in METHODS
    }


def routed(app: QuartTrio) -> set[tuple[str, str]]:
    """(method, path) of every HTTP route, in OpenAPI's {param} form."""
    out = set()
    for rule in app.url_map.iter_rules():
        # The WebSocket terminal is described in the document's text (OpenAPI has no
        # WebSockets); `static` is Quart's own, unused.
        if rule.websocket or rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        out |= {(m, path) for m in (rule.methods or ()) if m not in ("HEAD", "OPTIONS")}
    return out


def test_the_document_covers_exactly_the_routes(app: QuartTrio, doc: dict[str, Any]) -> None:
    documented = set(operations(doc))
    actual = routed(app)
    assert sorted(actual - documented) == [], "routes missing from controlplane/api/openapi.yaml"
    assert sorted(documented - actual) == [], "documented operations the app does not route"


def test_the_document_is_valid_openapi(doc: dict[str, Any]) -> None:
    validate(doc)
    ids = [op["operationId"] for op in operations(doc).values()]
    assert len(ids) == len(set(ids)), "operationIds must be unique"


def test_schemathesis_can_load_every_operation(doc: dict[str, Any]) -> None:
    schema = schemathesis.openapi.from_dict(doc)
    results = list(schema.get_all_operations())
    assert [r.err() for r in results if isinstance(r, Err)] == []
    assert len(results) == len(operations(doc))


def _parameters(doc: dict[str, Any], path: str, op: dict[str, Any]) -> list[dict[str, Any]]:
    params = [*doc["paths"][path].get("parameters", []), *op.get("parameters", [])]
    out = []
    for p in params:
        if "$ref" in p:
            p = doc["components"]["parameters"][p["$ref"].rsplit("/", 1)[-1]]
        out.append(p)
    return out


def test_errors_are_documented_where_routes_raise_them(doc: dict[str, Any]) -> None:
    for (method, path), op in operations(doc).items():
        where = f"{method} {path}"
        codes = set(op["responses"])
        assert any(c.startswith("2") for c in codes), where
        public = op.get("security") == []
        if path not in NO_INPUT_PUBLIC:
            assert any(c.startswith("4") for c in codes), f"{where} documents no 4xx"
        if not public:
            # The key is checked before anything else, on every authenticated route.
            assert "401" in codes, f"{where}: authenticated, so 401"
        if "{sandbox_id}" in path:
            # Another user's sandbox, or none: app.authenticate answers 404.
            assert "404" in codes, f"{where}: names a sandbox, so 404"
        body = op.get("requestBody")
        if body is not None and "application/json" in doc_content(doc, body):
            assert {"400", "413"} <= codes, f"{where}: reads a JSON body, so 400 and 413"
        if any(p["in"] == "query" and p["schema"].get("type") == "integer" for p in _parameters(doc, path, op)):
            assert "400" in codes, f"{where}: parses integer query parameters, so 400"


def doc_content(doc: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in body:
        body = doc["components"]["requestBodies"][body["$ref"].rsplit("/", 1)[-1]]
    content: dict[str, Any] = body["content"]
    return content


def test_security_is_global_and_public_routes_opt_out(app: QuartTrio, doc: dict[str, Any]) -> None:
    from controlplane.api.app import PUBLIC_PATHS

    assert doc["security"] == [{"ApiKey": []}]
    assert doc["components"]["securitySchemes"]["ApiKey"] == {
        **doc["components"]["securitySchemes"]["ApiKey"],
        "type": "apiKey",
        "in": "header",
        "name": "X-API-KEY",
    }
    for (_, path), op in operations(doc).items():
        if path in PUBLIC_PATHS:
            assert op.get("security") == [], path
    wake = doc["paths"]["/v1/sandboxes/{sandbox_id}/wake"]["post"]
    assert wake["security"] == [{"AccessToken": []}]


async def test_served_without_a_key_as_json_and_yaml(app: QuartTrio, doc: dict[str, Any]) -> None:
    client = app.test_client()
    response = await client.get("/v1/openapi.json")
    assert response.status_code == 200
    assert response.content_type == "application/json"
    served = json.loads(await response.get_data(as_text=True))
    # Paths carry /v1; the server is the appliance's own API host.
    assert served["servers"] == [{"url": "https://api.sbx.localhost:8443", "description": "this appliance"}]
    assert served["paths"] == doc["paths"]
    assert served["components"] == doc["components"]

    response = await client.get("/v1/openapi.yaml")
    assert response.status_code == 200
    assert response.content_type.startswith("application/yaml")
    assert yaml.safe_load(await response.get_data(as_text=True)) == served


async def test_other_routes_still_need_a_key(app: QuartTrio) -> None:
    response = await app.test_client().get("/v1/openapi")
    assert response.status_code == 401


def test_api_url_leaves_out_the_default_port() -> None:
    assert openapi.api_url("example.com", 443) == "https://api.example.com"
    assert openapi.api_url("example.com", None) == "https://api.example.com"
    assert openapi.api_url("sbx.localhost", 8443) == "https://api.sbx.localhost:8443"
