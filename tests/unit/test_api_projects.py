"""Projects through the API (Quart test client, fake runtime), and the firewall peers they make."""

from __future__ import annotations

from controlplane.projects import peer_pairs
from tests.unit.test_api import Api, api  # noqa: F401 - the fixture
from tests.unit.test_api_accounts import make_user


async def test_a_default_project_holds_sandboxes_created_without_one(api: Api) -> None:  # noqa: F811
    sandbox = await api.create()
    status, payload = await api.call("GET", "/v1/projects")
    assert status == 200
    [default] = payload["data"]["projects"]
    assert default["is_default"] and default["name"] == "default" and default["live_sandboxes"] == 1
    assert sandbox["project_id"] == default["project_id"]
    status, payload = await api.call("DELETE", f"/v1/projects/{default['project_id']}")
    assert status == 409 and payload["code"] == "default_project"


async def test_project_crud_and_moving_sandboxes(api: Api) -> None:  # noqa: F811
    status, payload = await api.call("POST", "/v1/projects", body={"name": "web", "description": "the site"})
    assert status == 201, payload
    web = payload["data"]
    assert (web["name"], web["description"], web["sandboxes_connect"]) == ("web", "the site", False)
    # By name too, at create and in lookups.
    sandbox = await api.create(project_id="web")
    assert sandbox["project_id"] == web["project_id"]
    assert (await api.call("GET", "/v1/projects/web"))[1]["data"]["project_id"] == web["project_id"]
    status, payload = await api.call("GET", f"/v1/projects/{web['project_id']}/sandboxes")
    assert [s["sandbox_id"] for s in payload["data"]["sandboxes"]] == [sandbox["sandbox_id"]]
    status, payload = await api.call("GET", "/v1/sandboxes", query={"project_id": "web"})
    assert payload["data"]["pagination"]["total"] == 1
    # Not empty: not deleted. Moved out: deleted.
    status, payload = await api.call("DELETE", "/v1/projects/web")
    assert status == 409 and "1 live sandbox" in payload["message"]
    status, payload = await api.call(
        "POST", f"/v1/sandboxes/{sandbox['sandbox_id']}/move", body={"project_id": "default"}
    )
    assert status == 200 and payload["data"]["project_id"] != web["project_id"]
    status, payload = await api.call("PATCH", "/v1/projects/web", body={"name": "site", "sandboxes_connect": True})
    assert status == 200 and payload["data"]["name"] == "site" and payload["data"]["sandboxes_connect"] is True
    assert (await api.call("DELETE", "/v1/projects/site"))[0] == 200
    assert (await api.call("GET", "/v1/projects/site"))[0] == 404


async def test_bad_project_input_is_refused_clearly(api: Api) -> None:  # noqa: F811
    await api.call("POST", "/v1/projects", body={"name": "one"})
    for body, word in (
        ({}, "name is required"),
        ({"name": "Bad Name"}, "name must be"),
        ({"name": "two", "sandboxes_connect": "yes"}, "true or false"),
        ({"name": "two", "owner": "x"}, "unknown field"),
        ({"name": "one"}, "pick another name"),
    ):
        status, payload = await api.call("POST", "/v1/projects", body=body)
        assert status in (400, 409) and word in payload["message"], (body, payload)
    status, payload = await api.call("POST", "/v1/sandboxes", body={"project_id": "nope"})
    assert status == 404 and "project nope" in payload["message"]
    sid = (await api.create())["sandbox_id"]
    status, payload = await api.call("POST", f"/v1/sandboxes/{sid}/move", body={})
    assert status == 400 and "project_id" in payload["message"]


async def test_projects_are_their_owners_alone(api: Api) -> None:  # noqa: F811
    _, alice_key = await make_user(api, "alice")
    _, payload = await api.call("POST", "/v1/projects", body={"name": "secret"}, key=alice_key)
    project_id = payload["data"]["project_id"]
    for method, path, body in (
        ("GET", f"/v1/projects/{project_id}", None),
        ("PATCH", f"/v1/projects/{project_id}", {"description": "x"}),
        ("DELETE", f"/v1/projects/{project_id}", None),
        ("GET", f"/v1/projects/{project_id}/sandboxes", None),
    ):
        assert (await api.call(method, path, body=body))[0] == 404, (method, path)
    # Nor can a sandbox be created in it, or moved into it, by anyone else.
    assert (await api.call("POST", "/v1/sandboxes", body={"project_id": project_id}))[0] == 404
    sid = (await api.create())["sandbox_id"]
    assert (await api.call("POST", f"/v1/sandboxes/{sid}/move", body={"project_id": project_id}))[0] == 404
    # Each has their own default, with the same name.
    _, payload = await api.call("GET", "/v1/projects", key=alice_key)
    assert sorted(p["name"] for p in payload["data"]["projects"]) == ["default", "secret"]


def test_peers_pair_the_sandboxes_of_projects_that_opted_in() -> None:
    live = [
        ("p1", "10.0.0.3"),
        ("p1", "10.0.0.2"),
        ("p1", "10.0.0.4"),
        ("p2", "10.0.0.5"),
        ("p2", "10.0.0.6"),
        ("p1", None),
    ]
    assert peer_pairs(live, {"p1"}) == [("10.0.0.2", "10.0.0.3"), ("10.0.0.2", "10.0.0.4"), ("10.0.0.3", "10.0.0.4")]
    assert peer_pairs(live, set()) == []
