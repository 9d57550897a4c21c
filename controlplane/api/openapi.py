"""The API's own OpenAPI document, served to clients and fuzzers.

    GET /v1/openapi.json    public: no API key (it describes the API, it grants nothing)
    GET /v1/openapi.yaml

The document is hand-written (openapi.yaml beside this file) and kept equal to the
routes the app registers by tests/unit/test_openapi.py. It is read once, when the
app is made, with `servers` set to this appliance's own API address, so a client
pointed at the document reaches the appliance that served it.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from quart import Response
from quart_trio import QuartTrio

DOCUMENT = Path(__file__).with_name("openapi.yaml")
PATHS = frozenset({"/v1/openapi.json", "/v1/openapi.yaml"})


@cache
def _load() -> dict[str, Any]:
    loaded = yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def document(api_url: str) -> dict[str, Any]:
    """The document with its one server: `api_url` (the paths carry /v1 themselves)."""
    doc = copy.deepcopy(_load())
    doc["servers"] = [{"url": api_url, "description": "this appliance"}]
    return doc


def api_url(domain: str, public_port: int | None) -> str:
    port = "" if public_port in (None, 443) else f":{public_port}"
    return f"https://api.{domain}{port}"


def register(app: QuartTrio, *, url: str) -> None:
    doc = document(url)
    # Rendered once: the document does not change while the appliance runs.
    as_yaml = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    as_json = json.dumps(doc, separators=(",", ":"))

    @app.get("/v1/openapi.json")
    async def openapi_json() -> Response:
        return Response(as_json, content_type="application/json")

    @app.get("/v1/openapi.yaml")
    async def openapi_yaml() -> Response:
        return Response(as_yaml, content_type="application/yaml; charset=utf-8")
