"""agent.auth: tokens, signed URLs (checked against the SDK's own signer), user selection."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import subprocess
import sys
import time
import urllib.parse
from typing import Any

import pytest
from scalebox.sandbox.signature import get_signature

from agent.auth import (
    DOWNLOAD,
    PUBLIC,
    TOKEN,
    UPLOAD,
    Authenticator,
    Grant,
    SignatureError,
    sign,
    user_from_authorization,
    verify_signature,
)
from agent.http import HttpError, Request, Response, Routes
from tests.unit.agent_helpers import exchange, serve

SECRET = "tok-3f9a"
NOW = 1_800_000_000


def sdk_signature(path: str, operation: str, user: str, expires_in: int | None = None) -> dict[str, Any]:
    with contextlib.redirect_stdout(io.StringIO()):  # the SDK prints what it signs
        return get_signature(path, operation, user, SECRET, expires_in)  # type: ignore[arg-type]


def make_request(target: str, headers: list[tuple[str, str]] | None = None, method: str = "GET") -> Request:
    return Request(method=method, target=target, headers=headers or [])


def signed_download(path: str, user: str = "root", expires_in: int | None = None, op: str = "read") -> str:
    signature = sdk_signature(path, op, user, expires_in)
    query = {"username": user, "signature": signature["signature"]}
    if signature["expiration"]:
        query["signature_expiration"] = str(signature["expiration"])
    # As the SDK builds it: the path without its leading slash, not percent-encoded.
    return f"/download/{path.lstrip('/')}?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote)


def signed_upload(path: str, user: str = "root", expires_in: int | None = None, op: str = "write") -> str:
    signature = sdk_signature(path, op, user, expires_in)
    query = {"path": path, "username": user, "signature": signature["signature"]}
    if signature["expiration"]:
        query["signature_expiration"] = str(signature["expiration"])
    return "/upload?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote)


def authenticator(token: str | None = SECRET, now: float | None = None) -> Authenticator:
    return Authenticator(token, clock=(lambda: now) if now is not None else time.time)


def grant(auth: Authenticator, target: str, policy: Any, headers: list[tuple[str, str]] | None = None) -> Grant:
    request = make_request(target.replace(" ", "%20"), headers)
    auth.check(request, policy)
    assert isinstance(request.auth, Grant)
    return request.auth


def refusal(auth: Authenticator, target: str, policy: Any, headers: list[tuple[str, str]] | None = None) -> str:
    with pytest.raises(HttpError) as caught:
        grant(auth, target, policy, headers)
    assert caught.value.status == 401
    return caught.value.message


def test_sign_matches_the_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: NOW - 60)  # the SDK's clock, for its expiration
    for path, op, user, expires_in in [
        ("/home/user/a.txt", "read", "user", None),
        ("relative/ü b.txt", "write", "root", 60),
    ]:
        expected = sdk_signature(path, op, user, expires_in)
        assert expected["expiration"] == (None if expires_in is None else NOW)
        assert sign(path, op, user, SECRET, expected["expiration"]) == expected["signature"]


def test_token() -> None:
    auth = authenticator()
    assert grant(auth, "/x", None, [("x-access-token", SECRET)]) == Grant("user", "token")
    assert grant(auth, "/x", TOKEN, [("x-access-token", SECRET)]).via == "token"
    assert "missing" in refusal(auth, "/x", None)
    assert "invalid" in refusal(auth, "/x", None, [("x-access-token", SECRET + "x")])
    assert "invalid" in refusal(auth, "/x", None, [("x-access-token", "\xff" + SECRET[1:])])
    assert grant(auth, "/health", PUBLIC).via == "public"


def test_no_token_configured_lets_everything_in(capsys: pytest.CaptureFixture[str]) -> None:
    for token in (None, ""):
        auth = authenticator(token)
        assert not auth.required
        assert grant(auth, "/x", None) == Grant("user", "open")
        assert grant(auth, "/download/etc/passwd?signature=garbage", DOWNLOAD).via == "open"
        auth.log_mode()
    events = [json.loads(line)["event"] for line in capsys.readouterr().err.splitlines()]
    assert events == ["auth_disabled", "auth_disabled"]
    authenticator().log_mode()
    assert capsys.readouterr().err == ""


def test_signed_download() -> None:
    auth = authenticator(now=NOW)
    for path in ["/home/user/report 1.json", "home/user/x.txt"]:
        target = signed_download(path)
        assert grant(auth, target, DOWNLOAD) == Grant("root", "signature", path)
    expiring = signed_download("/tmp/a", user="user", expires_in=60)
    assert grant(authenticator(), expiring, DOWNLOAD).user == "user"


def test_signed_download_refusals() -> None:
    auth = authenticator()
    good = signed_download("/tmp/a")
    assert "invalid signature" in refusal(auth, good.replace("/tmp/a", "/tmp/b"), DOWNLOAD)  # another path
    assert "invalid signature" in refusal(auth, good.replace("username=root", "username=user"), DOWNLOAD)
    tampered = good.replace("signature=v1_", "signature=v1_A")
    assert "invalid signature" in refusal(auth, tampered, DOWNLOAD)
    assert "invalid signature" in refusal(auth, signed_download("/tmp/a", op="write"), DOWNLOAD)  # another op
    assert "missing" in refusal(auth, good, TOKEN)  # a route that takes no signatures
    expired = signed_download("/tmp/a", expires_in=60)
    assert "expired" in refusal(authenticator(now=4_000_000_000), expired, DOWNLOAD)
    moved = expired.replace("signature_expiration=", "signature_expiration=9")
    assert "invalid signature" in refusal(auth, moved, DOWNLOAD)  # extending the expiry breaks it
    dropped = expired.split("&signature_expiration=")[0]
    assert "invalid signature" in refusal(auth, dropped, DOWNLOAD)
    malformed = expired.replace("signature_expiration=", "signature_expiration=x")
    assert "malformed" in refusal(auth, malformed, DOWNLOAD)


def test_signed_upload() -> None:
    auth = authenticator()
    target = signed_upload("/home/user/new dir/f.bin", user="user")
    assert grant(auth, target, UPLOAD) == Grant("user", "signature", "/home/user/new dir/f.bin")
    assert "invalid signature" in refusal(auth, target.replace("new%20dir", "other"), UPLOAD)
    assert "invalid signature" in refusal(auth, signed_upload("/a", op="read"), UPLOAD)
    assert "invalid signature" in refusal(auth, signed_download("/a").replace("/download/a", "/upload"), UPLOAD)


def test_verify_signature_directly() -> None:
    signature = sign("/f", "read", "root", SECRET, NOW + 10)
    kwargs: dict[str, Any] = {"operation": "read", "user": "root", "token": SECRET, "now": NOW}
    assert verify_signature(signature, paths=("x", "/f"), expiration=str(NOW + 10), **kwargs) == "/f"
    with pytest.raises(SignatureError):
        verify_signature(signature, paths=(), expiration=str(NOW + 10), **kwargs)
    with pytest.raises(SignatureError):
        verify_signature("v1_é", paths=("/f",), expiration=str(NOW + 10), **kwargs)
    path = next(f"/f{i}" for i in range(100) if "+" in sign(f"/f{i}", "read", "root", SECRET))
    plus = sign(path, "read", "root", SECRET)
    # An unescaped "+" arrives as a space.
    assert verify_signature(plus.replace("+", " "), paths=(path,), expiration=None, **kwargs) == path


@pytest.mark.parametrize(
    ("value", "user"),
    [
        (None, None),
        ("Basic " + base64.b64encode(b"user:").decode(), "user"),
        ("basic " + base64.b64encode(b"root:ignored").decode(), "root"),
        ("Basic " + base64.b64encode(b":").decode(), None),
        ("Basic " + base64.b64encode("jürgen:".encode()).decode(), "jürgen"),
        ("Bearer root", "root"),
        ("Bearer  ", None),
        ("Digest x", None),
    ],
)
def test_user_from_authorization(value: str | None, user: str | None) -> None:
    assert user_from_authorization(value) == user


@pytest.mark.parametrize("value", ["Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode()])
def test_malformed_authorization(value: str) -> None:
    with pytest.raises(ValueError):
        user_from_authorization(value)
    with pytest.raises(HttpError) as caught:
        grant(authenticator(None), "/x", None, [("authorization", value)])
    assert caught.value.status == 400
    assert grant(authenticator(None), "/health", PUBLIC, [("authorization", value)]).user == "user"


def test_user_selection_order() -> None:
    auth = authenticator(None)
    assert grant(auth, "/x?username=alice", None).user == "alice"
    assert grant(auth, "/x?username=alice", None, [("authorization", "Bearer bob")]).user == "bob"
    signed = signed_download("/f", user="carol")
    with_header = [("authorization", "Bearer bob"), ("x-access-token", "wrong")]
    assert grant(authenticator(), signed, DOWNLOAD, with_header).user == "carol"  # the signature binds the user


def test_over_http_with_the_sdk_url_forms() -> None:
    """The URLs the SDK builds, sent as an HTTP client sends them."""

    async def show(request: Request) -> Response:
        assert isinstance(request.auth, Grant)
        return Response(200, body=json.dumps(request.auth._asdict()).encode())

    routes = Routes(guard=authenticator().check)
    routes.add_prefix("GET", "/download/", show, auth=DOWNLOAD)
    routes.add("POST", "/upload", show, auth=UPLOAD)
    routes.add("GET", "/health", show, auth=PUBLIC)

    async def scenario(port: int) -> None:
        download = signed_download("/home/user/a b.txt", expires_in=300).replace(" ", "%20")
        upload = signed_upload("/home/user/up.txt", user="user")
        [(s1, _, b1), (s2, _, b2), (s3, _, b3), (s4, _, b4)] = await exchange(
            port,
            f"GET {download} HTTP/1.1\r\nHost: a\r\n\r\n".encode()
            + f"POST {upload} HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n".encode()
            + b"GET /download/etc/shadow HTTP/1.1\r\nHost: a\r\n\r\n"
            + b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n",
            responses=4,
        )
        assert (s1, json.loads(b1)) == (200, {"user": "root", "via": "signature", "signed_path": "/home/user/a b.txt"})
        assert (s2, json.loads(b2)["signed_path"]) == (200, "/home/user/up.txt")
        assert (s3, json.loads(b3)["code"]) == (401, "unauthenticated")
        assert (s4, json.loads(b4)["via"]) == (200, "public")

    serve(routes, scenario)


def test_check_rejects_unknown_policies() -> None:
    with pytest.raises(TypeError):
        authenticator().check(make_request("/"), "token")


def test_sign_does_not_load_openssl() -> None:
    code = "import sys; import agent.auth as a; a.sign('/p','read','u','t'); print('_hashlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
