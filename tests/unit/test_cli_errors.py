"""CLI error mapping: every failure an ApiClient meets becomes one line saying what to do."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from cli.client import ApiClient, error_for_transport
from cli.context import Settings
from cli.errors import ApiError, CliError

SERVER = "https://api.sbx.localhost:8443"
Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler, monkeypatch: pytest.MonkeyPatch, **settings: Any) -> ApiClient:
    monkeypatch.setattr(ApiClient, "transport", httpx.MockTransport(handler))
    values: dict[str, Any] = {"server_url": SERVER, "api_key": "sk-test", "ca_cert": None, **settings}
    return ApiClient(Settings(**values))


def error(status: int, message: str, code: str | None = None) -> Handler:
    body: dict[str, Any] = {"success": False, "error": "x", "message": message}
    if code:
        body["code"] = code
    return lambda request: httpx.Response(status, json=body)


def failure(handler: Handler, monkeypatch: pytest.MonkeyPatch, method: str = "GET", path: str = "/sandboxes",
            **settings: Any) -> CliError:  # fmt: skip
    with client(handler, monkeypatch, **settings) as api:
        try:
            api.request(method, path)
        except CliError as exc:
            return exc
    raise AssertionError("the request did not fail")


def one_line(exc: CliError) -> str:
    text = exc.format_message()
    assert "\n" not in text
    return text


def test_success_returns_the_envelopes_data_and_sends_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"success": True, "data": {"sandbox_id": "sbx-1"}, "message": "ok"})

    with client(handler, monkeypatch) as api:
        assert api.sandbox("sbx-1") == {"sandbox_id": "sbx-1"}
        api.request("GET", "/sandboxes", params={"limit": 1})
    assert str(seen[0].url) == f"{SERVER}/v1/sandboxes/sbx-1"
    assert str(seen[1].url) == f"{SERVER}/v1/sandboxes?limit=1"
    assert seen[0].headers["x-api-key"] == "sk-test"


def test_ids_cannot_walk_the_url_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        return httpx.Response(200, json={"success": True, "data": {}})

    with client(handler, monkeypatch) as api:
        api.sandbox("../templates")
    assert seen == ["/v1/sandboxes/..%2Ftemplates"]


def test_unknown_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    exc = failure(error(404, "sandbox sbx-x does not exist", "sandbox_not_found"), monkeypatch, path="/sandboxes/sbx-x")
    assert isinstance(exc, ApiError) and exc.status == 404 and exc.code == "sandbox_not_found"
    assert one_line(exc).startswith("sandbox sbx-x does not exist; `scalebox sandbox list`")
    assert exc.exit_code == 1


def test_wrong_key(monkeypatch: pytest.MonkeyPatch) -> None:
    exc = failure(error(401, "invalid API key", "invalid_api_key"), monkeypatch)
    assert one_line(exc).startswith("the server refused the API key (invalid API key); run `scalebox auth login`")


def test_conflict_message_is_the_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    exc = failure(error(409, "sandbox sbx-1 is already paused", "already_paused"), monkeypatch, "POST", "/x")
    assert one_line(exc) == "sandbox sbx-1 is already paused"
    assert isinstance(exc, ApiError) and exc.about_one_sandbox


def test_server_failure_says_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    exc = failure(error(503, "podman is not answering\nat all"), monkeypatch)
    assert (
        one_line(exc) == "podman is not answering at all (HTTP 503); retrying may help, the appliance's log says more"
    )
    assert isinstance(exc, ApiError) and not exc.about_one_sandbox


def test_an_answer_that_is_not_the_api(monkeypatch: pytest.MonkeyPatch) -> None:
    handler: Handler = lambda request: httpx.Response(502, text="<html>bad gateway</html>")  # noqa: E731
    assert "answered HTTP 502 Bad Gateway, not the ScaleBox API; the server URL" in one_line(
        failure(handler, monkeypatch)
    )


def test_an_unrouted_host_points_at_the_api_host(monkeypatch: pytest.MonkeyPatch) -> None:
    handler = error(404, "sbx.localhost is not under the sandbox domain", "unknown_host")
    exc = failure(handler, monkeypatch, server_url="https://sbx.localhost:8443")
    assert one_line(exc).endswith("; the server URL is the API host, like https://api.sbx.localhost:<port>")


def test_missing_settings_say_how_to_log_in() -> None:
    with pytest.raises(CliError, match=r"no server configured for profile 'default'; run `scalebox auth login`"):
        ApiClient(Settings(server_url=None, api_key="k", ca_cert=None))
    with pytest.raises(CliError, match=r"no API key configured .*SCALEBOX_API_KEY"):
        ApiClient(Settings(server_url=SERVER, api_key=None, ca_cert=None))


def test_a_missing_ca_file_is_named(tmp_path: Any) -> None:
    with pytest.raises(CliError, match=r"CA certificate .*/nope\.pem does not exist; fix --ca-cert"):
        ApiClient(Settings(server_url=SERVER, api_key="k", ca_cert=str(tmp_path / "nope.pem")))
    (tmp_path / "bad.pem").write_text("not a certificate")
    with pytest.raises(CliError, match=r"cannot load CA certificate .*bad\.pem .*PEM file"):
        ApiClient(Settings(server_url=SERVER, api_key="k", ca_cert=str(tmp_path / "bad.pem")))


# -- transport failures --------------------------------------------------------------------------


def raising(exc: BaseException, cause: BaseException | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc from cause

    return handler


def test_connection_refused_on_a_real_closed_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    api = ApiClient(Settings(server_url=f"https://127.0.0.1:{port}", api_key="k", ca_cert=None))
    with api, pytest.raises(CliError) as info:
        api.request("GET", "/sandboxes")
    assert one_line(info.value).startswith(f"cannot reach https://127.0.0.1:{port}: connection refused; ")


def test_untrusted_certificate_suggests_the_ca_option(monkeypatch: pytest.MonkeyPatch) -> None:
    cause = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    cause.verify_message = "unable to get local issuer certificate"
    assert one_line(failure(raising(httpx.ConnectError("handshake failed"), cause), monkeypatch)) == (
        f"cannot reach {SERVER}: its TLS certificate is not trusted (unable to get local issuer certificate); "
        "pass the appliance's CA with --ca-cert /var/lib/scalebox/tls/ca.pem (or set SCALEBOX_CA_CERT)"
    )


def test_unresolvable_host(monkeypatch: pytest.MonkeyPatch) -> None:
    cause = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    exc = failure(raising(httpx.ConnectError("x"), cause), monkeypatch)
    assert "the host name does not resolve (Name or service not known)" in one_line(exc)


def test_timeouts() -> None:
    assert "no answer within 10 s" in error_for_transport(httpx.ConnectTimeout("t"), SERVER).format_message()
    read = error_for_transport(httpx.ReadTimeout("t"), SERVER, timeout=60).format_message()
    assert read.startswith(f"{SERVER} did not answer within 60 s; the appliance may be busy")


def test_anything_else_is_still_one_line() -> None:
    message = error_for_transport(httpx.RemoteProtocolError("peer closed\nconnection"), SERVER).format_message()
    assert message == (
        f"cannot reach {SERVER}: peer closed connection; check the server URL (--server or SCALEBOX_SERVER_URL)"
    )
