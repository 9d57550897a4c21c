"""Users and their API keys: who may call the API, and whose resources they see.

Every API key acts for one user. A user sees and touches only what they own
(sandboxes, templates, keys): another user's resource answers 404, exactly as
one that does not exist, so ids cannot be probed. The admin role adds one power,
managing users (and their keys, to let someone back in); it does not open other
users' sandboxes.

    admin (usr-admin)      made on first start, holds the key in <data-dir>/admin-api-key
    user                   made by an admin: POST /v1/users answers with their first key

A key is active unless disabled (kept, can be enabled again) or past its
expiry; a user has at most `max_active_keys` active ones. A disabled user's keys
all stop working. Deleting a user deletes their keys, and is refused while they
own live sandboxes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from controlplane.apikeys import ensure_admin_user, new_api_key, random_id
from controlplane.errors import BadRequest, Conflict, Forbidden, NotFound
from controlplane.lifecycle.states import LIVE
from controlplane.records import ADMIN_USER_ID, ApiKeyRecord, UserRecord
from controlplane.store import Store

ADMIN, USER = "admin", "user"
ROLES = (ADMIN, USER)
MAX_ACTIVE_KEYS = 20
# Ten years: an expiry is a date people mean, not an overflow.
MAX_KEY_LIFETIME = 10 * 365 * 86400
_USER_NAME = re.compile(r"[a-z][a-z0-9._-]{0,63}")
_KEY_NAME_MAX = 100


# -- parsing (pure) ---------------------------------------------------------------------------


def _object(body: Any, allowed: set[str]) -> dict[str, Any]:
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_body")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}; send {', '.join(sorted(allowed))}", code="invalid_field")
    return body


def _user_name(value: Any) -> str:
    if not isinstance(value, str) or not _USER_NAME.fullmatch(value):
        raise BadRequest(
            "name must be 1-64 characters: lowercase letters, digits, '.', '_' or '-', starting with a letter",
            code="invalid_field",
        )
    return value


def _role(value: Any) -> str:
    if value not in ROLES:
        raise BadRequest(f"role must be one of {', '.join(ROLES)}", code="invalid_field")
    return str(value)


def _flag(body: dict[str, Any], key: str) -> bool | None:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise BadRequest(f"{key} must be true or false", code="invalid_field")
    return value


def _key_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > _KEY_NAME_MAX or not value.isprintable():
        raise BadRequest(f"name must be 1-{_KEY_NAME_MAX} printable characters", code="invalid_field")
    return value.strip()


@dataclass(frozen=True)
class NewUser:
    name: str
    role: str


@dataclass(frozen=True)
class UserUpdate:
    name: str | None = None
    role: str | None = None
    disabled: bool | None = None


@dataclass(frozen=True)
class NewKey:
    name: str
    expires_at: float | None


@dataclass(frozen=True)
class KeyUpdate:
    name: str | None = None
    disabled: bool | None = None


def parse_new_user(body: Any) -> NewUser:
    body = _object(body, {"name", "role"})
    if body.get("name") is None:
        raise BadRequest("name is required", code="invalid_field")
    return NewUser(name=_user_name(body["name"]), role=_role(body.get("role") or USER))


def parse_user_update(body: Any) -> UserUpdate:
    body = _object(body, {"name", "role", "disabled"})
    return UserUpdate(
        name=None if body.get("name") is None else _user_name(body["name"]),
        role=None if body.get("role") is None else _role(body["role"]),
        disabled=_flag(body, "disabled"),
    )


def parse_new_key(body: Any, now: float) -> NewKey:
    """{name, expires_in (seconds) | expires_at (epoch seconds)}; no expiry unless given."""
    body = _object(body, {"name", "expires_in", "expires_at"})
    name = "api key" if body.get("name") is None else _key_name(body["name"])
    expires_in, expires_at = body.get("expires_in"), body.get("expires_at")
    if expires_in is not None and expires_at is not None:
        raise BadRequest("send expires_in or expires_at, not both", code="invalid_field")
    for key, value in (("expires_in", expires_in), ("expires_at", expires_at)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise BadRequest(f"{key} must be a number of seconds", code="invalid_field")
    if expires_in is not None:
        if not 60 <= expires_in <= MAX_KEY_LIFETIME:
            raise BadRequest(f"expires_in must be 60 to {MAX_KEY_LIFETIME} seconds", code="invalid_field")
        return NewKey(name=name, expires_at=now + float(expires_in))
    if expires_at is not None and not now + 60 <= expires_at <= now + MAX_KEY_LIFETIME:
        raise BadRequest(
            "expires_at must be a time (epoch seconds) from a minute to ten years ahead", code="invalid_field"
        )
    return NewKey(name=name, expires_at=None if expires_at is None else float(expires_at))


def parse_key_update(body: Any) -> KeyUpdate:
    body = _object(body, {"name", "disabled"})
    return KeyUpdate(
        name=None if body.get("name") is None else _key_name(body["name"]), disabled=_flag(body, "disabled")
    )


def key_status(key: ApiKeyRecord, now: float) -> str:
    if key.disabled_at is not None:
        return "disabled"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    return "active"


# -- the accounts service -------------------------------------------------------------------------


class Accounts:
    def __init__(
        self, store: Store, *, clock: Callable[[], float] = time.time, max_active_keys: int = MAX_ACTIVE_KEYS
    ) -> None:
        self.store = store
        self.clock = clock
        self.max_active_keys = max_active_keys

    def ensure_admin(self) -> UserRecord:
        """The admin user, made on first start (keys from before users are theirs)."""
        return ensure_admin_user(self.store)

    # -- users --

    def user(self, user_id: str) -> UserRecord:
        user = self.store.get_user(user_id)
        if user is None:
            raise NotFound(f"user {user_id} does not exist", code="user_not_found")
        return user

    def require_admin(self, actor_id: str) -> UserRecord:
        actor = self.user(actor_id)
        if actor.role != ADMIN:
            raise Forbidden("only an admin can manage users", code="admin_only")
        return actor

    def create_user(self, actor_id: str, new: NewUser) -> tuple[UserRecord, ApiKeyRecord, str]:
        """The user and their first key (its secret is returned once)."""
        self.require_admin(actor_id)
        if self.store.user_by_name(new.name) is not None:
            raise Conflict(f"a user named {new.name!r} exists; pick another name", code="user_exists")
        user = UserRecord(id=random_id("usr-"), name=new.name, role=new.role, created_at=self.clock())
        self.store.put_user(user)
        key, secret = self._new_key(user.id, NewKey(name="first key", expires_at=None))
        return user, key, secret

    def update_user(self, actor_id: str, user_id: str, update: UserUpdate) -> UserRecord:
        self.require_admin(actor_id)
        user = self.user(user_id)
        if user_id == actor_id and (update.disabled or update.role == USER):
            raise Conflict("an admin cannot disable or demote themselves; ask another admin", code="self_lockout")
        if update.name is not None and update.name != user.name:
            if self.store.user_by_name(update.name) is not None:
                raise Conflict(f"a user named {update.name!r} exists; pick another name", code="user_exists")
            user = replace(user, name=update.name)
        if update.role is not None:
            user = replace(user, role=update.role)
        if update.disabled is not None:
            user = replace(user, disabled_at=self.clock() if update.disabled else None)
        self.store.put_user(user)
        return user

    def delete_user(self, actor_id: str, user_id: str) -> UserRecord:
        self.require_admin(actor_id)
        user = self.user(user_id)
        if user_id in (actor_id, ADMIN_USER_ID):
            raise Conflict(
                "this admin cannot be deleted (it is you, or the appliance's own admin)", code="self_lockout"
            )
        live = self.store.count_sandboxes_of(user_id, LIVE)
        if live:
            raise Conflict(
                f"user {user.name} owns {live} live sandbox(es); delete them first", code="user_has_sandboxes"
            )
        self.store.delete_user(user_id)
        return user

    # -- keys --

    def keys(self, user_id: str) -> list[ApiKeyRecord]:
        return self.store.api_keys_of(user_id)

    def key(self, user_id: str, key_id: str) -> ApiKeyRecord:
        key = self.store.get_api_key(key_id)
        if key is None or key.user_id != user_id or key.revoked_at is not None:
            raise NotFound(f"API key {key_id[:40]} does not exist", code="api_key_not_found")
        return key

    def create_key(self, user_id: str, new: NewKey) -> tuple[ApiKeyRecord, str]:
        self.user(user_id)
        return self._new_key(user_id, new)

    def _new_key(self, user_id: str, new: NewKey) -> tuple[ApiKeyRecord, str]:
        now = self.clock()
        active = sum(1 for k in self.store.api_keys_of(user_id) if key_status(k, now) == "active")
        if active >= self.max_active_keys:
            raise Conflict(
                f"{active} active API keys, the most a user may have; disable or delete one first",
                code="too_many_keys",
            )
        record, secret = new_api_key(new.name, now)
        record = replace(record, user_id=user_id, expires_at=new.expires_at)
        self.store.put_api_key(record)
        return record, secret

    def update_key(self, user_id: str, key_id: str, update: KeyUpdate) -> ApiKeyRecord:
        key = self.key(user_id, key_id)
        if update.name is not None:
            key = replace(key, name=update.name)
        if update.disabled is not None and update.disabled != (key.disabled_at is not None):
            if not update.disabled:
                # Enabling counts against the cap like a new key would.
                now = self.clock()
                active = sum(1 for k in self.store.api_keys_of(user_id) if key_status(k, now) == "active")
                if active >= self.max_active_keys:
                    raise Conflict(
                        f"{active} active API keys, the most a user may have; disable or delete one first",
                        code="too_many_keys",
                    )
            key = replace(key, disabled_at=self.clock() if update.disabled else None)
        self.store.put_api_key(key)
        return key

    def delete_key(self, user_id: str, key_id: str) -> ApiKeyRecord:
        key = self.key(user_id, key_id)
        self.store.delete_api_key(key.id)
        return key
