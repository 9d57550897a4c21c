"""Who may call the agent, and as which user.

Every route carries a policy; ``Authenticator.check`` runs before its handler
(it is the routes' guard), raises HttpError 401 to refuse and otherwise
leaves a ``Grant`` on ``request.auth``:

    PUBLIC     anyone (``/health``)
    TOKEN      ``X-Access-Token`` equal to SCALEBOX_ACCESS_TOKEN (the default: policy None)
    DOWNLOAD   the token, or a URL signed for ``read`` of the path after ``/download/``
    UPLOAD     the token, or a URL signed for ``write`` of the ``path`` query parameter

Without a configured token nothing is checked (the appliance always sets
one; a bare agent in development does not).

A signed URL carries ``?username=&signature=[&signature_expiration=]`` with

    signature = "v1_" + base64-without-padding(sha256("<path>:<operation>:<user>:<token>[:<expiration>]"))

``path`` is the file path exactly as the SDK was given it; the SDK drops
its leading slash in the download URL, so both forms are accepted.

The user a request acts as: the signed ``username`` of a signed URL; else
``Authorization: Basic base64(<user>:)`` or ``Bearer <user>`` (the SDKs send
both forms); else a ``username`` query parameter; else ``user``, the SDKs'
default.

sha256 and the constant-time comparison come from the interpreter's built-in
modules: ``hashlib`` and ``hmac`` would load OpenSSL, about 4 MB of memory in
every sandbox, to hash a few bytes now and then.
"""

from __future__ import annotations

import binascii
import time
from typing import Callable, NamedTuple

from agent import log
from agent.http.message import HttpError, Request

try:
    from _operator import _compare_digest as compare_digest  # what hmac itself falls back to
except ImportError:  # pragma: no cover - other interpreters
    from hmac import compare_digest
try:
    from _sha2 import sha256 as _sha256_type  # Python 3.12+
except ImportError:
    try:
        from _sha256 import sha256 as _sha256_type  # Python 3.9 - 3.11
    except ImportError:  # pragma: no cover - a build without the built-in module
        from hashlib import sha256 as _sha256_type

DEFAULT_USER = "user"
DOWNLOAD_PREFIX = "/download/"
OPERATIONS = ("read", "write")


class Grant(NamedTuple):
    """Why a request was let in, and whom it acts as."""

    user: str
    via: str  # "token", "signature", "open" (no token configured) or "public"
    signed_path: str | None = None  # with via "signature": the one path the URL allows


class Policy(NamedTuple):
    token: bool  # False: anyone may call
    operation: str | None = None  # "read" / "write": a URL signed for it also lets the request in
    signed_paths: Callable[[Request], tuple[str, ...]] | None = None  # the path forms the signature may cover


def _download_paths(request: Request) -> tuple[str, ...]:
    if not request.path.startswith(DOWNLOAD_PREFIX):
        return ()
    rest = request.path[len(DOWNLOAD_PREFIX) :]
    return ("/" + rest, rest)


def _upload_paths(request: Request) -> tuple[str, ...]:
    path = request.query_value("path")
    return () if path is None else (path,)


PUBLIC = Policy(token=False)
TOKEN = Policy(token=True)
DOWNLOAD = Policy(token=True, operation="read", signed_paths=_download_paths)
UPLOAD = Policy(token=True, operation="write", signed_paths=_upload_paths)


class SignatureError(ValueError):
    """A signed URL that does not let the request in; the message says why."""


class Authenticator:
    """The routes' guard (see the module docstring). ``clock`` returns Unix seconds."""

    def __init__(self, token: str | None, *, clock: Callable[[], float] = time.time) -> None:
        self._token = token or None
        self._clock = clock

    @property
    def required(self) -> bool:
        return self._token is not None

    def log_mode(self) -> None:
        """Say once, at start, when requests need no token."""
        if self._token is None:
            log.event("auth_disabled", reason="SCALEBOX_ACCESS_TOKEN is not set: requests need no access token")

    def check(self, request: Request, policy: object) -> None:
        policy = TOKEN if policy is None else policy
        if not isinstance(policy, Policy):
            raise TypeError(f"not an auth policy: {policy!r}")
        request.auth = self.grant(request, policy)

    def grant(self, request: Request, policy: Policy) -> Grant:
        if not policy.token:
            return Grant(_lenient_user(request), "public")
        if self._token is None:
            return Grant(requested_user(request), "open")
        given = request.header("x-access-token")
        if given is not None and _token_matches(given, self._token):
            return Grant(requested_user(request), "token")
        signature = request.query_value("signature")
        if policy.operation is not None and policy.signed_paths is not None and signature is not None:
            user = request.query_value("username") or DEFAULT_USER
            try:
                path = verify_signature(
                    signature,
                    paths=policy.signed_paths(request),
                    operation=policy.operation,
                    user=user,
                    token=self._token,
                    expiration=request.query_value("signature_expiration"),
                    now=self._clock(),
                )
            except SignatureError as exc:
                raise HttpError(401, "unauthenticated", str(exc)) from None
            return Grant(user, "signature", path)
        if given is None:
            raise HttpError(401, "unauthenticated", "missing access token (X-Access-Token header)")
        raise HttpError(401, "unauthenticated", "invalid access token (X-Access-Token header)")


def sign(path: str, operation: str, user: str, token: str, expiration: int | None = None) -> str:
    """The v1 signature of a file URL, as the SDKs compute it."""
    raw = f"{path}:{operation}:{user}:{token}"
    if expiration is not None:
        raw += f":{expiration}"
    digest = _sha256(raw.encode("utf-8", "surrogateescape"))
    return "v1_" + binascii.b2a_base64(digest, newline=False).decode("ascii").rstrip("=")


def verify_signature(
    signature: str,
    *,
    paths: tuple[str, ...],
    operation: str,
    user: str,
    token: str,
    expiration: str | None,
    now: float,
) -> str:
    """The path in ``paths`` that ``signature`` was made for; SignatureError when none or expired."""
    expires: int | None = None
    if expiration is not None:
        if not (expiration.isascii() and expiration.isdigit() and len(expiration) <= 12):
            raise SignatureError("malformed signature_expiration: expected Unix seconds")
        expires = int(expiration)
    # Base64 holds "+", which a query string reads as a space when a client did not escape it.
    given = signature.replace(" ", "+").encode("utf-8", "surrogateescape")
    matched = None
    for path in paths:
        # Compare against every form so the time taken does not tell which one matched.
        if compare_digest(given, sign(path, operation, user, token, expires).encode("ascii")) and matched is None:
            matched = path
    if matched is None:
        raise SignatureError(f"invalid signature for this {operation} URL")
    if expires is not None and expires < now:
        raise SignatureError("the signed URL has expired")
    return matched


def requested_user(request: Request) -> str:
    """The user named by the Authorization header or a ``username`` query; ``user`` when none."""
    authorization = request.header("authorization")
    try:
        user = user_from_authorization(authorization)
    except ValueError as exc:
        raise HttpError(400, "invalid_argument", f"malformed Authorization header: {exc}") from None
    if user is None:
        user = request.query_value("username") or None
    return user or DEFAULT_USER


def user_from_authorization(value: str | None) -> str | None:
    """``Basic base64(<user>:[anything])`` or ``Bearer <user>`` -> user; None for no or another scheme."""
    if value is None:
        return None
    scheme, _, credentials = value.strip().partition(" ")
    scheme = scheme.lower()
    credentials = credentials.strip()
    if scheme == "basic":
        try:
            decoded = binascii.a2b_base64(credentials.encode("ascii")).decode("utf-8")
        except (binascii.Error, UnicodeError):
            raise ValueError("Basic credentials are not base64 of UTF-8 text") from None
        user, colon, _ = decoded.partition(":")
        if not colon:
            raise ValueError("Basic credentials lack the ':' after the user name")
        return user or None
    if scheme == "bearer":
        return credentials or None
    return None


def _lenient_user(request: Request) -> str:
    try:
        return requested_user(request)
    except HttpError:
        return DEFAULT_USER  # a public route does not care


def _token_matches(given: str, token: str) -> bool:
    try:
        given_bytes = given.encode("latin-1")  # header values arrive as latin-1 text: back to their bytes
    except UnicodeEncodeError:
        return False
    return compare_digest(given_bytes, token.encode("utf-8", "surrogateescape"))


def _sha256(data: bytes) -> bytes:
    return _sha256_type(data).digest()
