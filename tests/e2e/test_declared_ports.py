"""Declared ports in a real appliance, with real clients: a private http port (header
token, a browser's ?token= and cookie, a WebSocket), a tcp port behind TLS (openssl
s_client, psql with sslmode=verify-full), and a tls port passed through to a service
holding its own certificate."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from tests.e2e.appliance import DOMAIN, Appliance, podman, stop_and_clean
from tests.e2e.helpers import container_name, copy_into, create, start_in_sandbox, wait_for, websocket_echo

pytestmark = pytest.mark.podman

PORTS = [
    {"port": 3000, "name": "site", "access": "private"},
    {"port": 3001, "name": "ws", "access": "private"},
    {"port": 5432, "name": "db", "protocol": "tcp"},
    {"port": 7000, "name": "echo", "protocol": "tcp"},
    {"port": 6379, "name": "redis", "protocol": "tcp"},
    {"port": 9443, "name": "own-tls", "protocol": "tls"},
]
SANDBOX_CA = trustme.CA()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Appliance, dict[str, Any], Path]]:
    app = Appliance(data_dir=Path(tempfile.mkdtemp(prefix="sbx-", dir="/tmp")))
    try:
        app.start()
        with app.client() as api:
            sandbox = create(app, api, custom_ports=PORTS)
        sid = sandbox["sandbox_id"]
        work = tmp_path_factory.mktemp("ports")
        # The tls port's service has a certificate of its own, for its own name.
        cert = SANDBOX_CA.issue_cert(f"9443-{sid}.{DOMAIN}")
        cert.cert_chain_pems[0].write_to_path(str(work / "own.pem"))
        cert.private_key_pem.write_to_path(str(work / "own.key"))
        SANDBOX_CA.cert_pem.write_to_path(str(work / "sandbox-ca.pem"))
        for name in ("own.pem", "own.key"):
            podman("cp", str(work / name), f"{container_name(sid)}:/tmp/{name}")
        copy_into(sid, "tcp_services.py", "/tmp/tcp_services.py")
        copy_into(sid, "ws_echo.py", "/tmp/ws_echo.py")
        podman("exec", container_name(sid), "sh", "-c", "mkdir -p /tmp/www && echo private-hello > /tmp/www/index.html")
        start_in_sandbox(sid, "python3", "-m", "http.server", "3000", "--directory", "/tmp/www")
        start_in_sandbox(sid, "python3", "/tmp/ws_echo.py", "3001")
        start_in_sandbox(sid, "python3", "/tmp/tcp_services.py", "pg", "5432")
        start_in_sandbox(sid, "python3", "/tmp/tcp_services.py", "echo", "7000")
        start_in_sandbox(sid, "python3", "/tmp/tcp_services.py", "resp", "6379")
        start_in_sandbox(sid, "python3", "/tmp/tcp_services.py", "tls-echo", "9443", "/tmp/own.pem", "/tmp/own.key")
        yield app, sandbox, work
    finally:
        stop_and_clean(app)
        shutil.rmtree(app.data_dir, ignore_errors=True)


def _mint(app: Appliance, sid: str, port: int, **body: Any) -> dict[str, Any]:
    with app.client() as api:
        resp = api.post(f"{app.api_url}/sandboxes/{sid}/ports/{port}/tokens", json=body)
    assert resp.status_code == 201, resp.text
    data: dict[str, Any] = resp.json()["data"]
    return data


def _tls_echo(app: Appliance, host: str, ctx: ssl.SSLContext, payload: bytes) -> tuple[bytes, bytes | None]:
    """(the answer, the certificate the client was shown) over TLS to `host` on the gateway port."""
    with (
        socket.create_connection(("127.0.0.1", app.port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        tls.sendall(payload)
        answer = b""
        while len(answer) < len(payload) + 5:
            chunk = tls.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer, tls.getpeercert(binary_form=True)


def _s_client(app: Appliance, host: str, ca: Path) -> list[str]:
    return [
        "openssl",
        "s_client",
        "-connect",
        f"127.0.0.1:{app.port}",
        "-servername",
        host,
        "-CAfile",
        str(ca),
        "-verify_return_error",
    ]


def _ready(app: Appliance, host: str, ctx: ssl.SSLContext) -> None:
    def answers() -> bool:
        try:
            return _tls_echo(app, host, ctx, b"ping")[0] == b"echo:ping"
        except OSError:
            return False

    wait_for(answers, 20, f"{host} to echo")


def test_a_private_port_wants_a_token_in_a_header_or_a_browsers_cookie(setup: Any) -> None:
    app, sandbox, _ = setup
    sid = sandbox["sandbox_id"]
    url = app.url(f"3000-{sid}")
    minted = _mint(app, sid, 3000, expires_in=3600)
    with app.client(api_key=None) as anon:
        wait_for(lambda: anon.get(url, headers={"X-Access-Token": minted["token"]}).status_code == 200, 20, "the site")
        refused = anon.get(url)
        assert refused.status_code == 401 and "private" in refused.json()["message"]
        assert anon.get(url, headers={"X-Access-Token": "spt_nope.nope"}).status_code == 401
        page = anon.get(url, headers={"X-Access-Token": minted["token"]})
        assert page.status_code == 200 and page.text.strip() == "private-hello"
    # A browser: opens the link once, follows the redirect, then holds only the cookie.
    with app.client(api_key=None) as browser:
        first = browser.get(minted["browser_url"], follow_redirects=True)
        assert first.status_code == 200 and first.text.strip() == "private-hello"
        [hop] = first.history
        assert hop.status_code == 303 and "token=" not in hop.headers["location"]
        assert "token" not in str(first.url)
        assert browser.cookies.get("scalebox_port_token") == minted["token"]
        again = browser.get(url)
        assert again.status_code == 200 and again.text.strip() == "private-hello"
        # The cookie is the host's alone: another port of the same sandbox does not get it.
        other = browser.get(app.url(f"3001-{sid}"))
        assert other.status_code == 401
        # Revoked: the cookie stops working at once.
        with app.client() as api:
            gone = api.delete(f"{app.api_url}/sandboxes/{sid}/ports/3000/tokens/{minted['token_id']}")
            assert gone.status_code == 200
        assert browser.get(url).status_code == 401


def test_a_websocket_to_a_private_port_needs_the_token_too(setup: Any) -> None:
    app, sandbox, _ = setup
    sid = sandbox["sandbox_id"]
    token = _mint(app, sid, 3001)["token"]

    def echoes() -> bool:
        try:
            return websocket_echo(app, f"3001-{sid}", "hi", headers=[("X-Access-Token", token)]) == "hi"
        except (AssertionError, OSError):
            return False

    wait_for(echoes, 20, "the WebSocket echo")
    assert websocket_echo(app, f"3001-{sid}", "with a token", headers=[("X-Access-Token", token)]) == "with a token"
    with pytest.raises(AssertionError, match="rejected with 401"):
        websocket_echo(app, f"3001-{sid}", "without")


def test_a_tcp_port_behind_tls_with_openssl_s_client(setup: Any) -> None:
    app, sandbox, _ = setup
    sid = sandbox["sandbox_id"]
    host = f"7000-{sid}.{DOMAIN}"
    _ready(app, host, ssl.create_default_context(cafile=str(app.ca)))
    client = subprocess.Popen(
        [*_s_client(app, host, app.ca), "-quiet"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write(b"hello from s_client\n")
        client.stdin.flush()
        line = client.stdout.readline()
        assert line == b"echo:hello from s_client\n"
    finally:
        client.kill()
        _, err = client.communicate(timeout=10)
    # Verified against the appliance's CA: TLS ended at the gateway, with its certificate.
    assert b"verify return:1" in err


def test_psql_with_sslmode_verify_full_reaches_a_tcp_port(setup: Any) -> None:
    app, sandbox, _ = setup
    sid = sandbox["sandbox_id"]
    dsn = (
        f"host=5432-{sid}.{DOMAIN} port={app.port} user=tester dbname=test connect_timeout=10 "
        f"sslmode=verify-full sslrootcert={app.ca}"
    )

    def query() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["psql", dsn, "-Atc", "select 42"], capture_output=True, text=True, timeout=30)

    wait_for(lambda: query().returncode == 0, 20, "psql to connect")
    done = query()
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "pg:select 42"


def test_redis_cli_with_tls_reaches_a_tcp_port(setup: Any) -> None:
    app, sandbox, _ = setup
    sid = sandbox["sandbox_id"]
    base = ["redis-cli", "-h", "127.0.0.1", "-p", str(app.port), "--tls", "--sni", f"6379-{sid}.{DOMAIN}"]
    base += ["--cacert", str(app.ca)]

    def run(*command: str) -> str:
        done = subprocess.run([*base, *command], capture_output=True, text=True, timeout=30)
        return done.stdout.strip() if done.returncode == 0 else f"failed: {done.stderr}"

    wait_for(lambda: run("PING") == "PONG", 20, "redis-cli PING")
    assert run("SET", "greeting", "through the gateway") == "OK"
    assert run("GET", "greeting") == "through the gateway"


def test_a_tls_port_is_passed_through_to_the_sandboxs_own_certificate(setup: Any) -> None:
    app, sandbox, work = setup
    sid = sandbox["sandbox_id"]
    host = f"9443-{sid}.{DOMAIN}"
    trusting_sandbox = ssl.create_default_context(cafile=str(work / "sandbox-ca.pem"))
    _ready(app, host, trusting_sandbox)
    answer, der = _tls_echo(app, host, trusting_sandbox, b"end to end")
    assert answer == b"echo:end to end"
    own = (work / "own.pem").read_text()
    assert der == ssl.PEM_cert_to_DER_cert(own)
    # A client trusting only the appliance's CA refuses it: the gateway did not end this TLS.
    with pytest.raises(ssl.SSLCertVerificationError):
        _tls_echo(app, host, ssl.create_default_context(cafile=str(app.ca)), b"x")
    # openssl agrees, verifying against the sandbox's CA.
    done = subprocess.run(
        [*_s_client(app, host, work / "sandbox-ca.pem"), "-brief"],
        input=b"",
        capture_output=True,
        timeout=30,
    )
    assert b"Verification: OK" in done.stderr, done.stderr


def test_an_http_request_for_a_tcp_port_is_told_how_to_reach_it(setup: Any) -> None:
    app, sandbox, _ = setup
    sid = sandbox["sandbox_id"]
    with httpx.Client(timeout=10) as plain:
        resp = plain.get(f"http://5432-{sid}.{DOMAIN}:{app.port}/")
    assert resp.status_code == 421 and "declared tcp" in resp.json()["message"]
    lines = [e for e in app.events("gateway.connection") if e.get("sandbox") == sid]
    assert {e["mode"] for e in lines} >= {"tcp", "tls"}
    assert all(e["bytes_in"] > 0 and e["bytes_out"] > 0 for e in lines if e["outcome"] == "ok")
