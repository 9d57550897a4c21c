"""The egress policy through the API: at create, GET and PUT .../network, on the fake runtime."""

from __future__ import annotations

from tests.unit.test_api import Api, api  # noqa: F401 - the fixture


async def test_create_stores_the_lists_in_canonical_form(api: Api) -> None:  # noqa: F811
    sandbox = await api.create(network={"allow_out": ["PyPI.org.", "*.Example.com", "10.1.2.3"], "deny_out": None})
    assert sandbox["network"] == {
        "allow_internet_access": True,
        "allow_out": ["10.1.2.3/32", "pypi.org", "*.example.com"],
        "deny_out": [],
    }
    status, payload = await api.call("GET", f"/v1/sandboxes/{sandbox['sandbox_id']}/network")
    assert status == 200
    assert payload["data"] == {"sandbox_id": sandbox["sandbox_id"], **sandbox["network"]}
    plain = await api.create()
    assert plain["network"] == {"allow_internet_access": True, "allow_out": [], "deny_out": []}


async def test_bad_lists_are_refused_with_what_to_fix(api: Api) -> None:  # noqa: F811
    cases = [
        ({"network": ["pypi.org"]}, "network must be an object"),
        ({"network": {"allow": ["pypi.org"]}}, "unknown field 'allow'"),
        ({"network": {"allow_out": "pypi.org"}}, "must be a list"),
        ({"network": {"allow_out": ["no spaces.org"]}}, "neither a CIDR"),
        ({"network": {"deny_out": ["*.", "x"]}}, "network.deny_out"),
        ({"network": {"allow_out": ["a.example"] * 257}}, "at most 256"),
    ]
    for body, message in cases:
        status, payload = await api.call("POST", "/v1/sandboxes", body=body)
        assert status == 400, (body, payload)
        assert message in payload["message"], (body, payload)


async def test_put_replaces_the_lists_and_keeps_internet_access_unless_given(api: Api) -> None:  # noqa: F811
    sid = (await api.create(network={"allow_out": ["a.example"], "deny_out": ["b.example"]}))["sandbox_id"]
    url = f"/v1/sandboxes/{sid}/network"
    status, payload = await api.call("PUT", url, body={"deny_out": ["203.0.113.0/24"]})
    assert status == 200, payload
    assert payload["data"] == {
        "sandbox_id": sid,
        "allow_internet_access": True,
        "allow_out": [],
        "deny_out": ["203.0.113.0/24"],
    }
    status, payload = await api.call("PUT", url, body={"allow_internet_access": False})
    assert status == 200 and payload["data"]["allow_internet_access"] is False
    assert payload["data"]["deny_out"] == []
    status, payload = await api.call("GET", f"/v1/sandboxes/{sid}")
    assert payload["data"]["allow_internet_access"] is False


async def test_put_refuses_bad_bodies_and_unknown_or_ended_sandboxes(api: Api) -> None:  # noqa: F811
    sid = (await api.create())["sandbox_id"]
    url = f"/v1/sandboxes/{sid}/network"
    for body, message in (
        ({"allow_internet_access": "yes"}, "true or false"),
        ({"network": {}}, "unknown field 'network'"),
        ({"allow_out": [1]}, "allow_out"),
        ([1, 2], "JSON object"),
    ):
        status, payload = await api.call("PUT", url, body=body)
        assert status == 400 and message in payload["message"], (body, payload)
    status, payload = await api.call("PUT", "/v1/sandboxes/sbx-unknown0000/network", body={})
    assert status == 404
    status, _ = await api.call("DELETE", f"/v1/sandboxes/{sid}")
    assert status in (200, 202, 204)
    status, payload = await api.call("PUT", url, body={"allow_out": ["a.example"]})
    assert status in (404, 409), payload
