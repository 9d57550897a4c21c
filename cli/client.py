"""The appliance's /v1 API, as the CLI calls it: envelopes unwrapped, failures as one-line CliErrors.

Every httpx failure is turned into a sentence that says what failed and what to
do; `error_for_response` and `error_for_transport` are pure so the unit tests can
feed them any status and any exception chain.
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Mapping
from typing import Any, Self
from urllib.parse import quote

import httpx

from cli.context import ENV_API_KEY, ENV_CA_CERT, ENV_SERVER, Settings
from cli.errors import ApiError, CliError

USER_AGENT = "scalebox-cli/0.1.0"
# Reads wait for the appliance (a create blocks until the sandbox runs); connecting
# should be quick, and a server that does not answer at all is reported sooner.
DEFAULT_TIMEOUT = 60.0
CONNECT_TIMEOUT = 10.0
EXAMPLE_CA = "/var/lib/scalebox/tls/ca.pem"


def ssl_context(ca_cert: str | None) -> ssl.SSLContext:
    """Trust `ca_cert` alone when given, else the system store (which honours SSL_CERT_FILE/SSL_CERT_DIR).

    httpx's own default is certifi's bundle, which neither knows an appliance's CA
    nor reads the system store, hence an explicit context.
    """
    try:
        if ca_cert:
            return ssl.create_default_context(cafile=ca_cert)
        return ssl.create_default_context()
    except FileNotFoundError:
        raise CliError(f"CA certificate {ca_cert} does not exist; fix --ca-cert or {ENV_CA_CERT}") from None
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise CliError(f"cannot load CA certificate {ca_cert} ({exc}); it must be a PEM file") from None


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes: httpx wraps httpcore, which wraps the OSError that says what happened."""
    out: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in out:
        out.append(current)
        current = current.__cause__ or current.__context__
    return out


def error_for_transport(exc: BaseException, server: str, *, timeout: float = DEFAULT_TIMEOUT) -> CliError:
    """A request that got no HTTP answer: refused, unresolvable, untrusted, timed out."""
    chain = _chain(exc)
    text = " ".join(str(e) for e in chain).lower()
    where = f"cannot reach {server}"
    check = f"check the server URL (--server or {ENV_SERVER})"
    untrusted = [e for e in chain if isinstance(e, ssl.SSLCertVerificationError)]
    if untrusted or "certificate verify failed" in text:
        reason = (getattr(untrusted[0], "verify_message", None) if untrusted else None) or "certificate verify failed"
        return CliError(
            f"{where}: its TLS certificate is not trusted ({reason}); pass the appliance's CA with "
            f"--ca-cert {EXAMPLE_CA} (or set {ENV_CA_CERT})"
        )
    for e in chain:
        if isinstance(e, ConnectionRefusedError) or getattr(e, "errno", None) == errno.ECONNREFUSED:
            return CliError(f"{where}: connection refused; is the appliance running there? {check}")
        if isinstance(e, socket.gaierror):
            return CliError(f"{where}: the host name does not resolve ({e.strerror or e}); {check}")
    if "connection refused" in text:
        return CliError(f"{where}: connection refused; is the appliance running there? {check}")
    if isinstance(exc, httpx.ConnectTimeout):
        return CliError(f"{where}: no answer within {CONNECT_TIMEOUT:g} s; {check}")
    if isinstance(exc, httpx.TimeoutException):
        return CliError(
            f"{server} did not answer within {timeout:g} s; the appliance may be busy, try again "
            "(`scalebox sandbox list` shows what happened)"
        )
    if any(isinstance(e, ssl.SSLError) for e in chain):
        return CliError(f"{where}: the TLS handshake failed ({exc}); is {server} the appliance's https:// URL?")
    detail = str(exc) or type(exc).__name__
    return CliError(f"{where}: {detail}; {check}")


def _envelope(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def error_for_response(response: httpx.Response, server: str) -> ApiError:
    """A non-2xx answer, from the error envelope's `message` when there is one."""
    status = response.status_code
    body = _envelope(response)
    if body is None:
        what = f"HTTP {status} {response.reason_phrase}".strip()
        return ApiError(
            f"{server} answered {what}, not the ScaleBox API; the server URL should be the appliance's "
            f"API address, like https://api.sbx.localhost:8443 (--server or {ENV_SERVER})",
            status=status,
        )
    message = detail = str(body.get("message") or body.get("error") or f"HTTP {status}")
    raw_code = body.get("code")
    code = raw_code if isinstance(raw_code, str) else None
    if status == 401:
        message = (
            f"the server refused the API key ({message}); run `scalebox auth login` with a valid key "
            f"(or fix --api-key / {ENV_API_KEY})"
        )
    elif code == "sandbox_not_found":
        message = f"{message}; `scalebox sandbox list` shows the sandboxes there are"
    elif code == "template_not_found":
        message = f"{message}; `scalebox template list` shows them"
    elif code == "unknown_host":
        # The gateway's answer for a host it does not route, e.g. the bare domain.
        host = httpx.URL(server).host
        message = f"{message}; the server URL is the API host, like https://api.{host.removeprefix('api.')}:<port>"
    elif status == 404 and message.startswith("no such endpoint"):
        message = f"{message}; is {server} a ScaleBox appliance recent enough for this command?"
    elif status >= 500:
        message = f"{message} (HTTP {status}); retrying may help, the appliance's log says more"
    return ApiError(message, status=status, code=code, detail=detail)


class ApiClient:
    """One appliance's /v1 API. `request` returns the envelope's `data` or raises CliError."""

    # The unit tests put an httpx.MockTransport here to run whole commands without a server.
    transport: httpx.BaseTransport | None = None

    def __init__(self, settings: Settings, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        if not settings.server_url:
            raise CliError(
                f"no server configured for profile {settings.profile!r}; run `scalebox auth login` "
                f"(or pass --server, or set {ENV_SERVER})"
            )
        if not settings.api_key:
            raise CliError(
                f"no API key configured for profile {settings.profile!r}; run `scalebox auth login` "
                f"(or pass --api-key, or set {ENV_API_KEY})"
            )
        self.settings = settings
        self.server_url: str = settings.server_url
        self.base_url = f"{self.server_url}/v1"
        self.api_key: str = settings.api_key
        self.timeout = timeout
        # An SSLContext, for httpx and for any other client (WebSockets) that reaches the appliance.
        self.verify: ssl.SSLContext = ssl_context(settings.ca_cert)
        self.headers = {"X-API-KEY": self.api_key, "User-Agent": USER_AGENT}
        self.http = httpx.Client(
            base_url=self.base_url,
            headers=self.headers,
            verify=self.verify,
            timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT),
            transport=self.transport,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """`path` is relative to /v1 (`/sandboxes/sbx-1`); returns the envelope's `data`."""
        extra: dict[str, Any] = {}
        if timeout is not None:
            extra["timeout"] = httpx.Timeout(timeout, connect=CONNECT_TIMEOUT)
        try:
            response = self.http.request(method, path, json=json, params=params, **extra)
        except httpx.HTTPError as exc:
            raise error_for_transport(exc, self.server_url, timeout=timeout or self.timeout) from None
        if not response.is_success:
            raise error_for_response(response, self.server_url)
        body = _envelope(response)
        if body is None:
            raise CliError(f"{self.server_url} answered {method} {path} with something other than the API's JSON")
        return body.get("data")

    def sandbox(self, sandbox_id: str) -> dict[str, Any]:
        data = self.request("GET", f"/sandboxes/{segment(sandbox_id)}")
        if not isinstance(data, dict):
            raise CliError(f"the server's answer for sandbox {sandbox_id} holds no sandbox")
        return data


def segment(value: str) -> str:
    """One path segment: an ID typed as `../templates` must not walk the URL tree."""
    return quote(value, safe="")
