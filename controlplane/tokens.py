"""Sandbox access tokens: minted by the control plane, verified by the gateway.

A token is an HMAC-SHA256 over the sandbox id under the appliance's secret key, so
the gateway verifies it without a database read and a token cannot be moved to
another sandbox. Fields are length-prefixed before MACing (as trio's DTLS cookies
do) so no two distinct inputs share an encoding. Comparison is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

_PURPOSE = b"scalebox-envd-access-v1"
_PORT_PURPOSE = b"scalebox-port-token-v1"
_PORT_PREFIX = "spt_"
_REPORT_PURPOSE = b"scalebox-internal-report-v1"
SECRET_BYTES = 32


def _signable(*fields: bytes) -> bytes:
    return b"".join(len(f).to_bytes(4, "big") + f for f in fields)


def mint_access_token(secret: bytes, sandbox_id: str) -> str:
    mac = hmac.new(secret, _signable(_PURPOSE, sandbox_id.encode()), hashlib.sha256).digest()
    return "sbt_" + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def verify_access_token(secret: bytes, sandbox_id: str, token: str | None) -> bool:
    if not token:
        return False
    expected = mint_access_token(secret, sandbox_id)
    return hmac.compare_digest(expected.encode(), token.encode("utf-8", "replace"))


def mint_port_token(secret: bytes, sandbox_id: str, token_id: str) -> str:
    """A port token: its id (which the sandbox's row lists while it lives) and a MAC
    binding the id to the sandbox, so ids cannot be guessed nor moved elsewhere."""
    mac = hmac.new(secret, _signable(_PORT_PURPOSE, sandbox_id.encode(), token_id.encode()), hashlib.sha256)
    return f"{_PORT_PREFIX}{token_id}.{base64.urlsafe_b64encode(mac.digest()).rstrip(b'=').decode()}"


def port_token_id(secret: bytes, sandbox_id: str, token: str | None) -> str | None:
    """The id of `token` if it is a genuine port token of `sandbox_id`, else None."""
    if not token or not token.startswith(_PORT_PREFIX) or len(token) > 128:
        return None
    token_id, dot, _ = token[len(_PORT_PREFIX) :].partition(".")
    if not dot or not token_id.isascii() or not token_id.isalnum():
        return None
    expected = mint_port_token(secret, sandbox_id, token_id)
    return token_id if hmac.compare_digest(expected.encode(), token.encode("utf-8", "replace")) else None


def sign_report(secret: bytes, body: bytes, *, now: float, nonce: str) -> str:
    """A gateway process's signature of an internal report (`POST /v1/internal/traffic`):
    `<unix time>.<nonce>.<mac>`, the MAC over all three and the body, so a report can
    be neither altered nor, within its age and with the nonces remembered, replayed."""
    stamp = str(int(now))
    mac = hmac.new(secret, _signable(_REPORT_PURPOSE, stamp.encode(), nonce.encode(), body), hashlib.sha256)
    return f"{stamp}.{nonce}.{mac.hexdigest()}"


def verify_report(secret: bytes, body: bytes, signature: str | None, *, now: float, max_age: float) -> str | None:
    """The nonce of a genuine signature of `body` made within `max_age` seconds of `now`, else None."""
    if not signature or len(signature) > 200:
        return None
    stamp, _, rest = signature.partition(".")
    nonce, _, _mac = rest.partition(".")
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12 and nonce.isascii() and nonce.isalnum()):
        return None
    if abs(now - int(stamp)) > max_age:
        return None
    expected = sign_report(secret, body, now=int(stamp), nonce=nonce)
    return nonce if hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")) else None


def load_or_create_secret(path: Path) -> bytes:
    """The appliance's signing key, created once (mode 0600) and kept across restarts."""
    try:
        data = path.read_bytes()
        if len(data) >= SECRET_BYTES:
            return data
    except FileNotFoundError:
        pass
    data = secrets.token_bytes(SECRET_BYTES)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return data
