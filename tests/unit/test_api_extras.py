"""Templates, ports and logs routes, on the Quart test client with the fake runtime."""

from __future__ import annotations

from tests.unit.test_api import Api, api  # noqa: F401 - the fixture


async def test_templates_catalogue(api: Api) -> None:  # noqa: F811
    status, payload = await api.call("GET", "/v1/templates")
    assert status == 200
    assert [t["template_id"] for t in payload["data"]["templates"]] == ["base", "code-interpreter"]
    assert payload["data"]["pagination"]["total"] == 2
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
        "protocol": "TCP",
        "url": f"https://3000-{sid}.sbx.localhost:8443/",
    }
    status, payload = await api.call("POST", f"/v1/sandboxes/{sid}/ports", body={"port": 3000, "name": "other"})
    assert status == 409 and "3000" in payload["message"]
    status, payload = await api.call("POST", f"/v1/sandboxes/{sid}/ports", body={"port": 70000, "name": "x"})
    assert status == 400 and "port" in payload["message"]
    status, payload = await api.call("POST", f"/v1/sandboxes/{sid}/ports", body={"port": 22, "name": "Bad_Name"})
    assert status == 400 and "name" in payload["message"]
    status, payload = await api.call("GET", f"/v1/sandboxes/{sid}/ports")
    assert [p["port"] for p in payload["data"]["ports"]] == [3000]
    status, payload = await api.call("GET", f"/v1/sandboxes/{sid}")
    assert payload["data"]["custom_ports"] == [{"port": 3000, "name": "web", "protocol": "TCP"}]
    status, payload = await api.call("DELETE", f"/v1/sandboxes/{sid}/ports/3000")
    assert status == 200 and payload["data"]["ports"] == []
    for bad in ("3000", "abc", "999999"):
        status, payload = await api.call("DELETE", f"/v1/sandboxes/{sid}/ports/{bad}")
        assert status == 404
    status, payload = await api.call("GET", "/v1/sandboxes/sbx-unknown0000/ports")
    assert status == 404


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
