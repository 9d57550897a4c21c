"""API keys: `key-<id>` names a key, `sk-<secret>` is what clients send in X-API-KEY.

Only a SHA-256 of the secret is stored. The secret has 256 bits of entropy, so a
plain hash (not a slow KDF) is enough: nobody can brute-force it, and lookups by
hash stay O(1). The found row is still compared with compare_digest.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

from controlplane.errors import Unauthorized
from controlplane.records import ADMIN_USER_ID, ApiKeyRecord, UserRecord
from controlplane.store import Store

_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"


def random_id(prefix: str, length: int = 16) -> str:
    return prefix + "".join(secrets.choice(_ALNUM) for _ in range(length))


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


def new_api_key(name: str, now: float) -> tuple[ApiKeyRecord, str]:
    secret = "sk-" + secrets.token_urlsafe(32)
    record = ApiKeyRecord(
        id=random_id("key-"),
        name=name,
        secret_hash=hash_secret(secret),
        prefix=secret[:7],
        created_at=now,
    )
    return record, secret


def authenticate(store: Store, presented: str | None, now: float | None = None) -> ApiKeyRecord:
    """The key's record, if it is active and its user is enabled; otherwise 401 saying which."""
    if not presented:
        raise Unauthorized("missing API key: send it in the X-API-KEY header", code="missing_api_key")
    digest = hash_secret(presented.strip())
    record = store.api_key_by_hash(digest)
    if record is None or not hmac.compare_digest(record.secret_hash, digest) or record.revoked_at:
        raise Unauthorized("invalid API key", code="invalid_api_key")
    now = time.time() if now is None else now
    if record.disabled_at is not None:
        raise Unauthorized(f"API key {record.id} is disabled; enable it or use another", code="api_key_disabled")
    if record.expires_at is not None and record.expires_at <= now:
        raise Unauthorized(f"API key {record.id} has expired; create a new one", code="api_key_expired")
    user = store.get_user(record.user_id)
    if user is None or user.disabled_at is not None:
        raise Unauthorized("the user of this API key is disabled or gone; ask an admin", code="user_disabled")
    return record


def ensure_admin_user(store: Store) -> UserRecord:
    """The appliance's own admin user (keys from before users existed are theirs)."""
    admin = store.get_user(ADMIN_USER_ID)
    if admin is None:
        name = "admin" if store.user_by_name("admin") is None else f"admin-{random_id('', 6)}"
        admin = UserRecord(id=ADMIN_USER_ID, name=name, role="admin", created_at=time.time())
        store.put_user(admin)
    return admin


def ensure_admin_key(store: Store, path: Path) -> str | None:
    """Make sure an admin key exists; return its secret when it was created now.

    The secret is kept in `path` (mode 0600) so the operator can read it; if the file
    survives but the database was reset, the same secret is registered again. The
    key acts for the admin user, made here too if missing.
    """
    ensure_admin_user(store)
    if path.exists():
        secret = path.read_text().strip()
        if secret and store.api_key_by_hash(hash_secret(secret)) is None:
            record = ApiKeyRecord(
                id=random_id("key-"),
                name="admin",
                secret_hash=hash_secret(secret),
                prefix=secret[:7],
                created_at=time.time(),
            )
            store.put_api_key(record)
        if secret:
            return None
    record, secret = new_api_key("admin", time.time())
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
        f.flush()
        os.fsync(f.fileno())
    # The key is registered before the file appears, so a crash between the two
    # leaves an unused row rather than a file naming a key that does not work.
    store.put_api_key(record)
    os.replace(tmp, path)
    return secret
