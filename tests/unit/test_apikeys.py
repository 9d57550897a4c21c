"""API keys: authentication by hashed secret, and the admin key written on first start."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from controlplane.apikeys import authenticate, ensure_admin_key, ensure_admin_user, hash_secret, new_api_key, random_id
from controlplane.errors import Unauthorized
from controlplane.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "db.sqlite")
    yield s
    s.close()


def test_new_api_key_shapes() -> None:
    record, secret = new_api_key("ci", 12.0)
    assert secret.startswith("sk-")
    assert len(secret) > 40
    assert record.id.startswith("key-")
    assert record.name == "ci"
    assert record.prefix == secret[:7]
    assert record.secret_hash == hash_secret(secret)
    assert secret.encode() not in record.secret_hash
    assert record.created_at == 12.0
    assert record.revoked_at is None
    assert new_api_key("ci", 12.0)[1] != secret


def test_random_id() -> None:
    value = random_id("sbx-", 20)
    assert value.startswith("sbx-")
    assert len(value) == 24
    assert set(value[4:]) <= set("abcdefghijklmnopqrstuvwxyz0123456789")
    assert random_id("sbx-", 20) != value


@pytest.mark.parametrize("presented", [None, ""])
def test_authenticate_missing(store: Store, presented: str | None) -> None:
    with pytest.raises(Unauthorized) as info:
        authenticate(store, presented)
    assert info.value.status == 401
    assert info.value.code == "missing_api_key"
    assert "X-API-KEY" in info.value.message


def test_authenticate_valid_and_wrong(store: Store) -> None:
    record, secret = new_api_key("ci", 1.0)
    store.put_api_key(record)
    # A key acts for a user: none there, no way in.
    with pytest.raises(Unauthorized) as missing:
        authenticate(store, secret)
    assert missing.value.code == "user_disabled"
    ensure_admin_user(store)
    assert authenticate(store, secret) == record
    # Surrounding whitespace from a copy-paste is forgiven.
    assert authenticate(store, f" {secret}\n") == record
    for wrong in (secret[:-1], secret + "x", secret.upper(), "sk-" + "a" * 43, "\udcff", "   "):
        with pytest.raises(Unauthorized) as info:
            authenticate(store, wrong)
        assert info.value.code == "invalid_api_key"


def test_authenticate_revoked(store: Store) -> None:
    record, secret = new_api_key("ci", 1.0)
    store.put_api_key(replace(record, revoked_at=2.0))
    with pytest.raises(Unauthorized) as info:
        authenticate(store, secret)
    assert info.value.code == "invalid_api_key"


def test_ensure_admin_key_creates_file_once(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "admin.key"
    secret = ensure_admin_key(store, path)
    assert secret is not None
    assert secret.startswith("sk-")
    assert path.read_text() == secret + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list(tmp_path.glob("*.tmp"))
    assert authenticate(store, secret).name == "admin"
    assert store.count_api_keys() == 1

    assert ensure_admin_key(store, path) is None
    assert path.read_text() == secret + "\n"
    assert store.count_api_keys() == 1
    assert authenticate(store, secret).name == "admin"


def test_ensure_admin_key_reregisters_after_database_reset(tmp_path: Path) -> None:
    path = tmp_path / "admin.key"
    first = Store(tmp_path / "one.sqlite")
    secret = ensure_admin_key(first, path)
    first.close()
    assert secret is not None

    fresh = Store(tmp_path / "two.sqlite")
    try:
        assert fresh.count_api_keys() == 0
        assert ensure_admin_key(fresh, path) is None
        assert path.read_text().strip() == secret
        assert authenticate(fresh, secret).name == "admin"
        assert fresh.count_api_keys() == 1
        # And once only.
        assert ensure_admin_key(fresh, path) is None
        assert fresh.count_api_keys() == 1
    finally:
        fresh.close()


def test_ensure_admin_key_replaces_an_empty_file(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "admin.key"
    path.write_text("\n")
    secret = ensure_admin_key(store, path)
    assert secret is not None
    assert path.read_text().strip() == secret
    assert authenticate(store, secret).name == "admin"
