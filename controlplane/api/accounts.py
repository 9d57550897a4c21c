"""Users and API keys (controlplane/users.py has the rules).

GET    /v1/users/me                       who this key acts for
GET    /v1/users                          admin: every user
POST   /v1/users                          admin: {name, role} -> the user and their first key (secret once)
GET    /v1/users/{id}                     admin, or the user themselves
PATCH  /v1/users/{id}                     admin: {name, role, disabled}
DELETE /v1/users/{id}                     admin: refused while they own live sandboxes
GET    /v1/users/{id}/api-keys            admin: a user's keys
POST   /v1/users/{id}/api-keys            admin: a new key for them (to let someone back in)
GET    /v1/api-keys                       the caller's keys (no secrets)
POST   /v1/api-keys                       {name, expires_in | expires_at} -> the secret, shown once
GET    /v1/api-keys/{id}
PATCH  /v1/api-keys/{id}                  {name, disabled}
DELETE /v1/api-keys/{id}
"""

from __future__ import annotations

import time
from typing import Any

from quart import Response
from quart_trio import QuartTrio

from controlplane.api.envelope import success
from controlplane.api.identity import current_user_id
from controlplane.api.schemas import iso
from controlplane.api.wire import json_response, read_json_body
from controlplane.errors import NotFound
from controlplane.records import ApiKeyRecord, UserRecord
from controlplane.users import (
    ADMIN,
    Accounts,
    key_status,
    parse_key_update,
    parse_new_key,
    parse_new_user,
    parse_user_update,
)


def user_json(user: UserRecord) -> dict[str, Any]:
    return {
        "user_id": user.id,
        "name": user.name,
        "role": user.role,
        "disabled": user.disabled_at is not None,
        "created_at": iso(user.created_at),
        "disabled_at": iso(user.disabled_at),
    }


def key_json(key: ApiKeyRecord, now: float) -> dict[str, Any]:
    return {
        "key_id": key.id,
        "name": key.name,
        "user_id": key.user_id,
        # The secret's first characters, to tell keys apart; never the secret.
        "prefix": key.prefix,
        "status": key_status(key, now),
        "created_at": iso(key.created_at),
        "expires_at": iso(key.expires_at),
        "disabled_at": iso(key.disabled_at),
    }


def register(app: QuartTrio, *, accounts: Accounts) -> None:
    def created_key(key: ApiKeyRecord, secret: str) -> dict[str, Any]:
        return {**key_json(key, time.time()), "api_key": secret, "header": {"X-API-KEY": secret}}

    @app.get("/v1/users/me")
    async def me() -> Response:
        return json_response(success(user_json(accounts.user(current_user_id()))))

    @app.get("/v1/users")
    async def list_users() -> Response:
        accounts.require_admin(current_user_id())
        return json_response(success({"users": [user_json(u) for u in accounts.store.list_users()]}))

    @app.post("/v1/users")
    async def create_user() -> Response:
        new = parse_new_user(await read_json_body())
        user, key, secret = accounts.create_user(current_user_id(), new)
        data = {**user_json(user), "first_key": created_key(key, secret)}
        return json_response(success(data, "user created; the key's secret is shown only now"), 201)

    @app.get("/v1/users/<user_id>")
    async def get_user(user_id: str) -> Response:
        actor = accounts.user(current_user_id())
        if actor.id != user_id and actor.role != ADMIN:
            # Not the caller and not theirs to see: as if it did not exist.
            raise NotFound(f"user {user_id[:40]} does not exist", code="user_not_found")
        return json_response(success(user_json(accounts.user(user_id))))

    @app.patch("/v1/users/<user_id>")
    async def update_user(user_id: str) -> Response:
        update = parse_user_update(await read_json_body())
        return json_response(success(user_json(accounts.update_user(current_user_id(), user_id, update))))

    @app.delete("/v1/users/<user_id>")
    async def delete_user(user_id: str) -> Response:
        user = accounts.delete_user(current_user_id(), user_id)
        return json_response(success({"user_id": user.id}, "user and their API keys deleted"))

    @app.get("/v1/users/<user_id>/api-keys")
    async def list_user_keys(user_id: str) -> Response:
        accounts.require_admin(current_user_id())
        accounts.user(user_id)
        now = time.time()
        return json_response(success({"api_keys": [key_json(k, now) for k in accounts.keys(user_id)]}))

    @app.post("/v1/users/<user_id>/api-keys")
    async def create_user_key(user_id: str) -> Response:
        accounts.require_admin(current_user_id())
        key, secret = accounts.create_key(user_id, parse_new_key(await read_json_body(), time.time()))
        return json_response(success(created_key(key, secret), "API key created; its secret is shown only now"), 201)

    @app.get("/v1/api-keys")
    async def list_keys() -> Response:
        now = time.time()
        return json_response(success({"api_keys": [key_json(k, now) for k in accounts.keys(current_user_id())]}))

    @app.post("/v1/api-keys")
    async def create_key() -> Response:
        new = parse_new_key(await read_json_body(), time.time())
        key, secret = accounts.create_key(current_user_id(), new)
        return json_response(success(created_key(key, secret), "API key created; its secret is shown only now"), 201)

    @app.get("/v1/api-keys/<key_id>")
    async def get_key(key_id: str) -> Response:
        return json_response(success(key_json(accounts.key(current_user_id(), key_id), time.time())))

    @app.patch("/v1/api-keys/<key_id>")
    async def update_key(key_id: str) -> Response:
        update = parse_key_update(await read_json_body())
        key = accounts.update_key(current_user_id(), key_id, update)
        return json_response(success(key_json(key, time.time())))

    @app.delete("/v1/api-keys/<key_id>")
    async def delete_key(key_id: str) -> Response:
        key = accounts.delete_key(current_user_id(), key_id)
        return json_response(success({"key_id": key.id}, "API key deleted"))
