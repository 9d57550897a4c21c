"""Sandbox access tokens: one module mints and verifies them; a token fits one sandbox."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from controlplane.tokens import SECRET_BYTES, load_or_create_secret, mint_access_token, verify_access_token

SECRET = bytes(range(32))
SBX = "sbx-abcd1234"


def test_roundtrip() -> None:
    token = mint_access_token(SECRET, SBX)
    assert token.startswith("sbt_")
    assert verify_access_token(SECRET, SBX, token)


def test_minting_is_deterministic_and_url_safe() -> None:
    token = mint_access_token(SECRET, SBX)
    assert token == mint_access_token(SECRET, SBX)
    body = token.removeprefix("sbt_")
    assert "=" not in body
    assert set(body) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert len(body) == 43  # 32 bytes of HMAC-SHA256, base64 without padding


def test_token_of_one_sandbox_fails_for_another() -> None:
    token = mint_access_token(SECRET, SBX)
    assert not verify_access_token(SECRET, "sbx-abcd1235", token)
    assert not verify_access_token(SECRET, SBX + "0", token)
    assert not verify_access_token(SECRET, SBX[:-1], token)
    assert mint_access_token(SECRET, "sbx-a") != mint_access_token(SECRET, "sbx-b")


def test_tampered_token_fails() -> None:
    token = mint_access_token(SECRET, SBX)
    for i in range(len("sbt_"), len(token)):
        flipped = "A" if token[i] != "A" else "B"
        assert not verify_access_token(SECRET, SBX, token[:i] + flipped + token[i + 1 :])
    assert not verify_access_token(SECRET, SBX, token[:-1])
    assert not verify_access_token(SECRET, SBX, token + "A")
    assert not verify_access_token(SECRET, SBX, token + "=")
    assert not verify_access_token(SECRET, SBX, token.removeprefix("sbt_"))
    assert not verify_access_token(SECRET, SBX, token.upper())
    assert not verify_access_token(SECRET, SBX, " " + token)


@pytest.mark.parametrize("token", [None, "", "sbt_", "x", "\x00", "sbt_é", "\udcff"])
def test_missing_or_junk_token_fails_without_raising(token: str | None) -> None:
    assert verify_access_token(SECRET, SBX, token) is False


def test_different_secret_fails() -> None:
    token = mint_access_token(SECRET, SBX)
    assert not verify_access_token(bytes(32), SBX, token)
    assert not verify_access_token(SECRET[:-1] + b"\xff", SBX, token)


def test_load_or_create_secret_creates_0600_and_persists(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    first = load_or_create_secret(path)
    assert len(first) == SECRET_BYTES
    assert path.read_bytes() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(path) == first
    assert not list(tmp_path.glob("*.tmp"))
    # Tokens minted before a restart still verify after it.
    token = mint_access_token(first, SBX)
    assert verify_access_token(load_or_create_secret(path), SBX, token)


def test_load_or_create_secret_is_random_per_file(tmp_path: Path) -> None:
    assert load_or_create_secret(tmp_path / "a") != load_or_create_secret(tmp_path / "b")


def test_load_or_create_secret_replaces_a_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    path.write_bytes(b"short")
    secret = load_or_create_secret(path)
    assert len(secret) == SECRET_BYTES
    assert secret != b"short"
    assert path.read_bytes() == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_load_or_create_secret_keeps_an_existing_secret(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    path.write_bytes(b"s" * 48)
    assert load_or_create_secret(path) == b"s" * 48
