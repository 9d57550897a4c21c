"""Users, API keys and ownership through the API (Quart test client, fake runtime)."""

from __future__ import annotations

import time
from typing import Any

from controlplane.apikeys import authenticate
from controlplane.errors import Unauthorized
from tests.unit.test_api import Api, api  # noqa: F401 - the fixture


async def make_user(api: Api, name: str, role: str = "user") -> tuple[str, str]:  # noqa: F811
    status, payload = await api.call("POST", "/v1/users", body={"name": name, "role": role})
    assert status == 201, payload
    data = payload["data"]
    assert data["first_key"]["api_key"].startswith("sk-")
    return data["user_id"], data["first_key"]["api_key"]


async def test_the_admin_exists_and_makes_users(api: Api) -> None:  # noqa: F811
    status, payload = await api.call("GET", "/v1/users/me")
    assert status == 200 and payload["data"]["user_id"] == "usr-admin" and payload["data"]["role"] == "admin"
    alice, alice_key = await make_user(api, "alice")
    status, payload = await api.call("GET", "/v1/users/me", key=alice_key)
    assert payload["data"] == {**payload["data"], "user_id": alice, "name": "alice", "role": "user", "disabled": False}
    status, payload = await api.call("GET", "/v1/users")
    assert [u["name"] for u in payload["data"]["users"]] == ["admin", "alice"]
    # Names are unique and follow the rules.
    status, payload = await api.call("POST", "/v1/users", body={"name": "alice"})
    assert status == 409 and "alice" in payload["message"]
    for bad in ({"name": "Alice"}, {"name": "1x"}, {}, {"name": "bob", "role": "root"}, {"name": "bob", "x": 1}):
        status, payload = await api.call("POST", "/v1/users", body=bad)
        assert status == 400, (bad, payload)


async def test_only_an_admin_manages_users(api: Api) -> None:  # noqa: F811
    alice, alice_key = await make_user(api, "alice")
    bob, _ = await make_user(api, "bob")
    for method, path, body in (
        ("GET", "/v1/users", None),
        ("POST", "/v1/users", {"name": "carol"}),
        ("PATCH", f"/v1/users/{bob}", {"disabled": True}),
        ("DELETE", f"/v1/users/{bob}", None),
        ("GET", f"/v1/users/{bob}/api-keys", None),
    ):
        status, payload = await api.call(method, path, body=body, key=alice_key)
        assert status == 403 and "admin" in payload["message"], (method, path, payload)
    # A user sees themselves, and nobody else.
    assert (await api.call("GET", f"/v1/users/{alice}", key=alice_key))[0] == 200
    assert (await api.call("GET", f"/v1/users/{bob}", key=alice_key))[0] == 404


async def test_two_users_cannot_see_or_touch_each_others_sandboxes(api: Api) -> None:  # noqa: F811
    _, alice_key = await make_user(api, "alice")
    _, bob_key = await make_user(api, "bob")
    status, payload = await api.call("POST", "/v1/sandboxes", body={}, key=alice_key)
    assert status == 201
    sid = payload["data"]["sandbox_id"]
    status, payload = await api.call("GET", "/v1/sandboxes", key=alice_key)
    assert [s["sandbox_id"] for s in payload["data"]["sandboxes"]] == [sid]
    status, payload = await api.call("GET", "/v1/sandboxes", key=bob_key)
    assert payload["data"]["sandboxes"] == [] and payload["data"]["pagination"]["total"] == 0
    # Every route naming it answers 404 for bob, as for a sandbox that does not exist.
    attempts: list[tuple[str, str, Any]] = [
        ("GET", "", None),
        ("GET", "/status", None),
        ("DELETE", "", None),
        ("POST", "/pause", None),
        ("POST", "/resume", None),
        ("POST", "/timeout", {"timeout": 60}),
        ("GET", "/ports", None),
        ("POST", "/ports", {"port": 3000}),
        ("GET", "/network", None),
        ("PUT", "/network", {"allow_out": []}),
        ("GET", "/logs", None),
        ("GET", "/metrics", None),
        ("POST", "/exec", {"cmd": "true"}),
    ]
    for method, suffix, body in attempts:
        status, payload = await api.call(method, f"/v1/sandboxes/{sid}{suffix}", body=body, key=bob_key)
        assert status == 404, (method, suffix, payload)
        assert payload["message"] == f"sandbox {sid} does not exist", payload
        unknown_status, _ = await api.call(method, f"/v1/sandboxes/sbx-nope{suffix}", body=body, key=bob_key)
        assert unknown_status == 404
    # The admin is a user like the others here: no way into alice's sandbox either.
    assert (await api.call("GET", f"/v1/sandboxes/{sid}"))[0] == 404
    # And it is all still there for alice.
    status, payload = await api.call("GET", f"/v1/sandboxes/{sid}", key=alice_key)
    assert status == 200 and payload["data"]["status"] == "running"


async def test_api_keys_lifecycle(api: Api) -> None:  # noqa: F811
    _, alice_key = await make_user(api, "alice")
    status, payload = await api.call("POST", "/v1/api-keys", body={"name": "ci", "expires_in": 3600}, key=alice_key)
    assert status == 201, payload
    created = payload["data"]
    secret, key_id = created["api_key"], created["key_id"]
    assert created["status"] == "active" and created["expires_at"] is not None
    assert secret.startswith(created["prefix"])
    # Listed without secrets.
    status, payload = await api.call("GET", "/v1/api-keys", key=alice_key)
    listed = payload["data"]["api_keys"]
    assert [k["name"] for k in listed] == ["first key", "ci"]
    assert all("api_key" not in k for k in listed)
    # Renamed, disabled (then refused with a reason), enabled, deleted (then unknown).
    status, payload = await api.call("PATCH", f"/v1/api-keys/{key_id}", body={"name": "ci-2"}, key=alice_key)
    assert status == 200 and payload["data"]["name"] == "ci-2"
    status, payload = await api.call("PATCH", f"/v1/api-keys/{key_id}", body={"disabled": True}, key=alice_key)
    assert payload["data"]["status"] == "disabled"
    status, payload = await api.call("GET", "/v1/users/me", key=secret)
    assert status == 401 and payload["code"] == "api_key_disabled"
    await api.call("PATCH", f"/v1/api-keys/{key_id}", body={"disabled": False}, key=alice_key)
    assert (await api.call("GET", "/v1/users/me", key=secret))[0] == 200
    # Another user's key is not there for bob.
    _, bob_key = await make_user(api, "bob")
    for method in ("GET", "PATCH", "DELETE"):
        status, _ = await api.call(
            method, f"/v1/api-keys/{key_id}", body={} if method == "PATCH" else None, key=bob_key
        )
        assert status == 404
    status, payload = await api.call("DELETE", f"/v1/api-keys/{key_id}", key=alice_key)
    assert status == 200
    status, payload = await api.call("GET", "/v1/users/me", key=secret)
    assert status == 401 and payload["code"] == "invalid_api_key"
    for bad in (
        {"expires_in": 5},
        {"expires_in": "1h"},
        {"expires_at": 1},
        {"name": ""},
        {"expires_in": 60, "expires_at": 1},
    ):
        status, payload = await api.call("POST", "/v1/api-keys", body=bad, key=alice_key)
        assert status == 400, (bad, payload)


async def test_expired_keys_and_disabled_users_are_refused(api: Api) -> None:  # noqa: F811
    alice, alice_key = await make_user(api, "alice")
    status, payload = await api.call("POST", "/v1/api-keys", body={"expires_in": 60}, key=alice_key)
    soon = payload["data"]["api_key"]
    assert authenticate(api.store, soon).user_id == alice
    try:
        authenticate(api.store, soon, now=time.time() + 61)
    except Unauthorized as exc:
        assert exc.code == "api_key_expired"
    else:
        raise AssertionError("an expired key was accepted")
    status, payload = await api.call("PATCH", f"/v1/users/{alice}", body={"disabled": True})
    assert status == 200 and payload["data"]["disabled"] is True
    status, payload = await api.call("GET", "/v1/users/me", key=alice_key)
    assert status == 401 and payload["code"] == "user_disabled"
    status, payload = await api.call("PATCH", f"/v1/users/{alice}", body={"disabled": False})
    assert (await api.call("GET", "/v1/users/me", key=alice_key))[0] == 200
    # An admin cannot lock themselves out.
    status, payload = await api.call("PATCH", "/v1/users/usr-admin", body={"disabled": True})
    assert status == 409


async def test_active_keys_are_capped(api: Api) -> None:  # noqa: F811
    _, alice_key = await make_user(api, "alice")
    cap = 20
    made = [await api.call("POST", "/v1/api-keys", body={"name": f"k{i}"}, key=alice_key) for i in range(cap - 1)]
    assert all(status == 201 for status, _ in made)
    status, payload = await api.call("POST", "/v1/api-keys", body={}, key=alice_key)
    assert status == 409 and payload["code"] == "too_many_keys"
    # Disabling one makes room; enabling it again is refused while full.
    first = made[0][1]["data"]["key_id"]
    await api.call("PATCH", f"/v1/api-keys/{first}", body={"disabled": True}, key=alice_key)
    assert (await api.call("POST", "/v1/api-keys", body={}, key=alice_key))[0] == 201
    status, payload = await api.call("PATCH", f"/v1/api-keys/{first}", body={"disabled": False}, key=alice_key)
    assert status == 409 and payload["code"] == "too_many_keys"


async def test_deleting_a_user_is_refused_while_they_own_sandboxes(api: Api) -> None:  # noqa: F811
    bob, bob_key = await make_user(api, "bob")
    status, payload = await api.call("POST", "/v1/sandboxes", body={}, key=bob_key)
    sid = payload["data"]["sandbox_id"]
    status, payload = await api.call("DELETE", f"/v1/users/{bob}")
    assert status == 409 and "1 live sandbox" in payload["message"]
    assert (await api.call("DELETE", f"/v1/sandboxes/{sid}", key=bob_key))[0] == 202
    assert (await api.call("DELETE", f"/v1/users/{bob}"))[0] == 200
    status, payload = await api.call("GET", "/v1/users/me", key=bob_key)
    assert status == 401
    # The admin can give a locked-out user a new key.
    carol, _ = await make_user(api, "carol")
    status, payload = await api.call("POST", f"/v1/users/{carol}/api-keys", body={"name": "recovery"})
    assert status == 201
    assert (await api.call("GET", "/v1/users/me", key=payload["data"]["api_key"]))[1]["data"]["name"] == "carol"
    assert (await api.call("DELETE", "/v1/users/usr-admin"))[0] == 409


def test_a_database_from_before_users_is_the_admins(tmp_path: Any) -> None:
    """Keys and sandboxes written before users existed belong to the admin after the upgrade."""
    import sqlite3

    from controlplane.apikeys import ensure_admin_key
    from controlplane.store import SandboxQuery, Store

    path = tmp_path / "db.sqlite"
    store = Store(path)
    secret = ensure_admin_key(store, tmp_path / "admin-api-key")
    assert secret is not None
    store.close()
    db = sqlite3.connect(path)
    db.execute("DROP INDEX sandboxes_owner")
    for table, column in (("sandboxes", "owner_id"), ("api_keys", "user_id"), ("api_keys", "expires_at")):
        db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    db.execute("DROP TABLE users")
    db.commit()
    db.close()
    store = Store(path)
    assert ensure_admin_key(store, tmp_path / "admin-api-key") is None
    assert authenticate(store, secret).user_id == "usr-admin"
    assert store.list_sandboxes(SandboxQuery(owner_id="usr-admin")) == ([], 0)
    store.close()
