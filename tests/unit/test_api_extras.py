"""Templates, ports and logs routes, on the Quart test client with the fake runtime."""

from __future__ import annotations

from tests.unit.test_api import Api, api  # noqa: F401 - the fixture


async def test_templates_catalogue(api: Api) -> None:  # noqa: F811
    status, payload = await api.call("GET", "/v1/templates")
    assert status == 200
    assert [t["template_id"] for t in payload["data"]["templates"]] == ["base", "base-gvisor", "code-interpreter"]
    assert payload["data"]["pagination"]["total"] == 3
    status, payload = await api.call("GET", "/v1/templates/base")
    assert status == 200 and payload["data"]["image"] == "localhost/scalebox/base:latest"
    status, payload = await api.call("GET", "/v1/templates/nope")
    assert status == 404 and "nope" in payload["message"]


async def test_ports_declare_list_remove(api: Api) -> None:  # noqa: F811
    sid = (await api.create())["sandbox_id"]
    status, payload = await api.call("POST", f"/v1/sandboxes/{sid}/ports", body={"port": 3000, "name": "web"})
    assert status == 201
    assert payload["data"] == {
        "port": 3000,
        "name": "web",
        "protocol": "http",
        "access": "public",
        "host_port": None,
        "address": f"3000-{sid}.sbx.localhost:8443",
        "url": f"https://3000-{sid}.sbx.localhost:8443/",
        "host_address": None,
    }
    status, payload = await api.call("POST", f"/v1/sandboxes/{sid}/ports", body={"port": 3000, "name": "other"})
    assert status == 409 and "3000" in payload["message"]
    status, payload = await api.call("POST", f"/v1/sandboxes/{sid}/ports", body={"port": 3001, "name": "web"})
    assert status == 409 and "web" in payload["message"]
    status, payload = await api.call("POST", f"/v1/sandboxes/{sid}/ports", body={"port": 70000, "name": "x"})
    assert status == 400 and "port" in payload["message"]
    status, payload = await api.call("POST", f"/v1/sandboxes/{sid}/ports", body={"port": 22, "name": "Bad_Name"})
    assert status == 400 and "name" in payload["message"]
    status, payload = await api.call("GET", f"/v1/sandboxes/{sid}/ports")
    assert [p["port"] for p in payload["data"]["ports"]] == [3000]
    assert payload["data"]["template_ports"] == [] and payload["data"]["custom_ports"] == payload["data"]["ports"]
    status, payload = await api.call("GET", f"/v1/sandboxes/{sid}")
    assert payload["data"]["custom_ports"] == [
        {"port": 3000, "name": "web", "protocol": "http", "access": "public", "host_port": None}
    ]
    status, payload = await api.call("DELETE", f"/v1/sandboxes/{sid}/ports/3000")
    assert status == 200 and payload["data"]["ports"] == []
    for bad in ("3000", "abc", "999999"):
        status, payload = await api.call("DELETE", f"/v1/sandboxes/{sid}/ports/{bad}")
        assert status == 404
    status, payload = await api.call("GET", "/v1/sandboxes/sbx-unknown0000/ports")
    assert status == 404


async def test_port_protocols_and_access(api: Api) -> None:  # noqa: F811
    sid = (await api.create(custom_ports=[{"port": 5432, "name": "db", "protocol": "tcp"}]))["sandbox_id"]
    status, payload = await api.call("GET", f"/v1/sandboxes/{sid}/ports")
    [db] = payload["data"]["ports"]
    assert (db["protocol"], db["access"], db["url"]) == ("tcp", "public", None)
    assert db["address"] == f"5432-{sid}.sbx.localhost:8443"
    status, payload = await api.call(
        "POST", f"/v1/sandboxes/{sid}/ports", body={"port": 443, "name": "own-tls", "protocol": "tls"}
    )
    assert status == 201 and payload["data"]["protocol"] == "tls"
    # The published API's enum: TCP is what the hosted service serves on the port domain, http here.
    status, payload = await api.call("POST", f"/v1/sandboxes/{sid}/ports", body={"port": 80, "protocol": "TCP"})
    assert status == 201 and (payload["data"]["protocol"], payload["data"]["name"]) == ("http", "port-80")
    status, payload = await api.call(
        "POST", f"/v1/sandboxes/{sid}/ports", body={"port": 81, "name": "app", "access": "private"}
    )
    assert status == 201 and payload["data"]["access"] == "private"
    refusals = [
        ({"port": 53, "protocol": "UDP"}, "UDP"),
        ({"port": 82, "protocol": "quic"}, "protocol"),
        ({"port": 83, "access": "secret"}, "access"),
        ({"port": 84, "protocol": "tcp", "access": "private"}, "private port must be http"),
        ({"port": 8888}, "agent"),
        ({"port": 85, "host_port": True}, "host_port"),
        ({"port": 86, "service_port": 87}, "service_port"),
        ({"name": "noport"}, "port is required"),
    ]
    for body, words in refusals:
        status, payload = await api.call("POST", f"/v1/sandboxes/{sid}/ports", body=body)
        assert status == 400 and words in payload["message"], (body, payload)


async def test_port_tokens_minted_listed_revoked(api: Api) -> None:  # noqa: F811
    ports = [{"port": 3000, "name": "app", "access": "private"}]
    sid = (await api.create(custom_ports=ports))["sandbox_id"]
    status, payload = await api.call(
        "POST",
        f"/v1/sandboxes/{sid}/ports/3000/tokens",
        body={"expires_in": 600, "path_prefix": "/api", "methods": ["get", "HEAD"], "name": "ci"},
    )
    assert status == 201, payload
    minted = payload["data"]
    assert minted["token"].startswith("spt_") and minted["header"] == {"X-Access-Token": minted["token"]}
    assert minted["methods"] == ["GET", "HEAD"] and minted["path_prefix"] == "/api"
    assert minted["browser_url"] == f"https://3000-{sid}.sbx.localhost:8443/api?token={minted['token']}"
    status, payload = await api.call("GET", f"/v1/sandboxes/{sid}/ports/3000/tokens")
    [listed] = payload["data"]["tokens"]
    assert listed["token_id"] == minted["token_id"] and "token" not in listed  # the secret is shown once
    status, payload = await api.call("POST", f"/v1/sandboxes/{sid}/ports/3001/tokens")
    assert status == 404 and "declare" in payload["message"]
    for body, words in [
        ({"expires_in": 0}, "expires_in"),
        ({"path_prefix": "api"}, "path_prefix"),
        ({"path_prefix": "/a/../b"}, "path_prefix"),
        ({"methods": []}, "methods"),
        ({"methods": ["GE T"]}, "methods"),
        ([1], "JSON object"),
    ]:
        status, payload = await api.call("POST", f"/v1/sandboxes/{sid}/ports/3000/tokens", body=body)
        assert status == 400 and words in payload["message"], (body, payload)
    status, _ = await api.call("DELETE", f"/v1/sandboxes/{sid}/ports/3000/tokens/{minted['token_id']}")
    assert status == 200
    status, payload = await api.call("GET", f"/v1/sandboxes/{sid}/ports/3000/tokens")
    assert payload["data"]["tokens"] == []
    status, _ = await api.call("DELETE", f"/v1/sandboxes/{sid}/ports/3000/tokens/{minted['token_id']}")
    assert status == 404
    # Undeclaring the port takes its tokens with it.
    await api.call("POST", f"/v1/sandboxes/{sid}/ports/3000/tokens")
    await api.call("DELETE", f"/v1/sandboxes/{sid}/ports/3000")
    assert api.store.get_sandbox(sid).port_tokens == []  # type: ignore[union-attr]


async def test_logs_tail(api: Api) -> None:  # noqa: F811
    sid = (await api.create())["sandbox_id"]
    [container] = api.runtime.containers.values()
    container.log_lines.extend([b"first", b"second", "thi\u00efrd".encode()])
    status, payload = await api.call("GET", f"/v1/sandboxes/{sid}/logs", query={"tail": "2"})
    assert status == 200 and payload["data"]["lines"] == ["second", "thiïrd"]
    for bad in ("0", "-1", "x", "100001"):
        status, payload = await api.call("GET", f"/v1/sandboxes/{sid}/logs", query={"tail": bad})
        assert status == 400 and "tail" in payload["message"]
    await api.call("DELETE", f"/v1/sandboxes/{sid}")
    status, payload = await api.call("GET", f"/v1/sandboxes/{sid}/logs")
    assert status == 409 and "terminated" in payload["message"]
