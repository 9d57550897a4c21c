"""Bad input over the real gateway gets a 4xx with the error envelope, never a 500."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.appliance import Appliance

pytestmark = pytest.mark.podman


def _assert_envelope(resp: Any, status: int, *words: str) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["success"] is False and body["error"] and body["message"]
    for word in words:
        assert word in body["message"], body["message"]


def test_bad_requests_get_clear_errors(appliance: Appliance) -> None:
    url = f"{appliance.api_url}/sandboxes"
    with appliance.client() as api, appliance.client(api_key=None) as anon:
        _assert_envelope(api.post(url, content=b'{"timeout": '), 400, "not valid JSON")
        _assert_envelope(api.post(url, content=b'{"name": "\xff\xfe"}'), 400, "UTF-8")
        _assert_envelope(api.post(url, json=[1, 2]), 400, "JSON object")
        _assert_envelope(api.post(url, json={"timeout": "soon"}), 400, "timeout")
        _assert_envelope(api.post(url, json={"timeout": -5}), 400, "timeout")
        _assert_envelope(api.post(url, json={"timeout": 10**12}), 400, "timeout")
        _assert_envelope(api.post(url, json={"memory_mb": 10**9}), 400, "memory_mb")
        _assert_envelope(api.post(url, json={"memory_mb": 1}), 400, "memory_mb")
        _assert_envelope(api.post(url, json={"cpu_count": True}), 400, "cpu_count")
        _assert_envelope(api.post(url, json={"metadata": {"a": 1}}), 400, "metadata")
        _assert_envelope(api.post(url, json={"env_vars": {"1BAD": "x"}}), 400, "env_vars")
        _assert_envelope(api.post(url, json={"template": "no-such-template"}), 404, "no-such-template")
        _assert_envelope(anon.post(url, json={}), 401, "API key")
        _assert_envelope(anon.get(url, headers={"x-api-key": "sk-wrong"}), 401, "invalid API key")
        _assert_envelope(api.get(f"{url}/sbx-doesnotexist"), 404, "sbx-doesnotexist")
        _assert_envelope(api.delete(f"{url}/sbx-doesnotexist"), 404)
        _assert_envelope(api.post(f"{url}/sbx-doesnotexist/pause"), 404)
        _assert_envelope(api.put(f"{url}/sbx-doesnotexist/timeout", json={"timeout": 5}), 404)
        _assert_envelope(api.get(url, params={"limit": "-1"}), 400, "limit")
        _assert_envelope(api.get(url, params={"status": "sleeping"}), 400, "sleeping")
        _assert_envelope(api.get(f"{appliance.api_url}/nothing-here"), 404)
        # Nothing half-made was left behind by any of that.
        assert appliance.containers() == []
        assert api.get(url).json()["data"]["pagination"]["total"] == 0


def test_gateway_refuses_unknown_hosts_and_sandboxes(appliance: Appliance) -> None:
    with appliance.client(api_key=None) as anon:
        _assert_envelope(anon.get(appliance.url("sbx-doesnotexist0000", "/health")), 404, "does not exist")
        _assert_envelope(anon.get(appliance.url("8080-sbx-doesnotexist0000")), 404, "does not exist")
        _assert_envelope(anon.get(appliance.url("not-a-sandbox")), 404, "names no sandbox")
        # Plain HTTP on the same port reaches the API as well.
        plain = anon.get(f"http://api.sbx.localhost:{appliance.port}/v1/sandboxes")
        _assert_envelope(plain, 401, "API key")
