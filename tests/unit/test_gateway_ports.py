"""Declared ports through a real gateway on loopback, routed by the appliance's own router
(appliance/router.py) over sandbox rows held in memory: private ports and their tokens,
the ?token= to cookie exchange, and tcp (TLS ended here) and tls (passed through) ports."""

from __future__ import annotations

import ssl
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
import trustme

from appliance.router import make_router
from controlplane.lifecycle.states import State
from controlplane.records import SandboxRecord
from controlplane.tokens import mint_access_token, mint_port_token
from gateway.server import Gateway
from gateway.tls.identity import load_server_tls
from gateway.upstream import Pool, UnixAddress
from tests.unit.test_gateway_proxy import (
    DEADLINE,
    Peer,
    echoed,
    echoed_headers,
    fetch,
    header,
    quick_limits,
    read_until_eof,
    recv_exactly,
    upstream,
    websocket_echo_roundtrip,
    ws_echo_handler,
)

SECRET = b"k" * 32
DOMAIN = "sbx.test"
SID = "sbx-ports0000"
CA = trustme.CA()
_CERT = CA.issue_cert(f"*.{DOMAIN}")
_DIR = tempfile.TemporaryDirectory(prefix="gateway-ports-")
CA_PEM, CERT_PEM, KEY_PEM = (Path(_DIR.name) / name for name in ("ca.pem", "cert.pem", "key.pem"))
CA.cert_pem.write_to_path(str(CA_PEM))
_CERT.cert_chain_pems[0].write_to_path(str(CERT_PEM))
_CERT.private_key_pem.write_to_path(str(KEY_PEM))
# The sandbox's own certificate, from a CA the gateway knows nothing of (passthrough).
SANDBOX_CA = trustme.CA()


def record(
    *ports: dict[str, Any], tokens: list[dict[str, Any]] | None = None, state: State = State.RUNNING
) -> SandboxRecord:
    return SandboxRecord(
        id=SID,
        template_id="base",
        state=state,
        ip="127.0.0.1",
        cpu_count=1,
        memory_mb=512,
        storage_gb=0,
        timeout=300,
        custom_ports=list(ports),
        port_tokens=tokens or [],
        created_at=0.0,
        updated_at=0.0,
    )


def port(number: int, protocol: str = "http", access: str = "public") -> dict[str, Any]:
    return {"port": number, "name": f"p{number}", "protocol": protocol, "access": access, "host_port": None}


def grant(token_id: str, number: int, **scope: Any) -> dict[str, Any]:
    return {"id": token_id, "port": number, "path_prefix": None, "methods": None, "expires_at": None} | scope


@dataclass
class Rows:
    """The sandbox table as the router sees it; `set` is a committed write."""

    rec: SandboxRecord
    version: int = 0

    def set(self, rec: SandboxRecord) -> None:
        self.rec, self.version = rec, self.version + 1


@dataclass
class Running:
    port: int
    rows: Rows

    async def plain(self) -> Peer:
        return Peer(await trio.open_tcp_stream("127.0.0.1", self.port), h11.CLIENT)

    async def tls(self, server_name: str, ctx: ssl.SSLContext | None = None) -> trio.SSLStream[trio.SocketStream]:
        if ctx is None:
            ctx = ssl.create_default_context(cafile=str(CA_PEM))
        stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", self.port), ctx, server_hostname=server_name)
        await stream.do_handshake()
        return stream


@asynccontextmanager
async def gateway(rec: SandboxRecord) -> AsyncIterator[Running]:
    rows = Rows(rec)
    routers = make_router(
        domain=DOMAIN,
        secret=SECRET,
        api_address=UnixAddress("/nonexistent"),
        record=lambda sid: rows.rec if sid == SID else None,
        version=lambda: rows.version,
    )
    gw = Gateway(
        router=routers.http,
        streams=routers.stream,
        tls=load_server_tls(CERT_PEM, KEY_PEM),
        pool=Pool(connect_timeout=1.0),
        limits=quick_limits(),
    )
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(gw.serve, listeners, shutdown)
        try:
            yield Running(listeners[0].socket.getsockname()[1], rows)
        finally:
            shutdown.set()


def host(number: int) -> bytes:
    return f"{number}-{SID}.{DOMAIN}".encode()


def get(
    number: int, target: str = "/", headers: list[tuple[bytes, bytes]] | None = None, method: str = "GET"
) -> h11.Request:
    return h11.Request(method=method, target=target, headers=[(b"host", host(number)), *(headers or [])])


# -- private http ports ------------------------------------------------------------------


async def test_a_private_port_refuses_without_a_token_and_accepts_its_own() -> None:
    with trio.fail_after(DEADLINE):
        async with upstream() as up:
            p = up.port
            token = mint_port_token(SECRET, SID, "tok1")
            other_port_token = mint_port_token(SECRET, SID, "tok2")
            rec = record(port(p, access="private"), tokens=[grant("tok1", p), grant("tok2", p + 1)])
            async with gateway(rec) as gw:
                client = await gw.plain()
                response, body = await fetch(client, get(p))
                assert response.status_code == 401 and b"private" in body and b"needs a token" in body
                response, body = await fetch(client, get(p, headers=[(b"x-access-token", other_port_token)]))
                assert response.status_code == 401
                forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
                response, _ = await fetch(client, get(p, headers=[(b"x-access-token", forged.encode())]))
                assert response.status_code == 401
                response, body = await fetch(client, get(p, "/x", headers=[(b"x-access-token", token.encode())]))
                assert response.status_code == 200
                # The gateway's credential stops at the gateway.
                assert "x-access-token" not in echoed_headers(body)
                # The sandbox's own access token opens every port of it.
                owner = mint_access_token(SECRET, SID).encode()
                response, _ = await fetch(client, get(p, headers=[(b"x-access-token", owner)]))
                assert response.status_code == 200
                # Revoked: the row no longer lists it, and the very next request sees that.
                gw.rows.set(replace(rec, port_tokens=[]))
                response, _ = await fetch(client, get(p, headers=[(b"x-access-token", token.encode())]))
                assert response.status_code == 401


async def test_a_port_tokens_scope_holds_per_request() -> None:
    with trio.fail_after(DEADLINE):
        async with upstream() as up:
            p = up.port
            soon = time.time() + 0.5
            scoped = grant("tok1", p, path_prefix="/api", methods=["GET"], expires_at=soon)
            token = mint_port_token(SECRET, SID, "tok1").encode()
            async with gateway(record(port(p, access="private"), tokens=[scoped])) as gw:
                client = await gw.plain()
                auth = [(b"x-access-token", token)]
                for target, status in [("/api", 200), ("/api/v1?q=1", 200), ("/apix", 403), ("/", 403)]:
                    response, _ = await fetch(client, get(p, target, headers=auth))
                    assert response.status_code == status, target
                response, body = await fetch(client, get(p, "/api/../admin", headers=auth))
                assert response.status_code == 403
                response, body = await fetch(client, get(p, "/api", headers=auth, method="DELETE"))
                assert response.status_code == 403 and b"GET" in body
                # The cached verdict does not outlive the token.
                await trio.sleep_until(trio.current_time() + (soon - time.time()) + 0.05)
                response, body = await fetch(client, get(p, "/api", headers=auth))
                assert response.status_code == 401 and b"expired" in body


async def test_a_query_token_becomes_a_host_cookie_that_then_works_alone() -> None:
    with trio.fail_after(DEADLINE):
        async with upstream() as up:
            p = up.port
            token = mint_port_token(SECRET, SID, "tok1")
            rec = record(port(p, access="private"), tokens=[grant("tok1", p, expires_at=time.time() + 600)])
            async with gateway(rec) as gw:
                tls = Peer(await gw.tls(host(p).decode()), h11.CLIENT)
                response, _ = await fetch(tls, get(p, f"/page?a=1&token={token}&b=2"))
                assert response.status_code == 303
                assert header(response.headers, b"location") == b"/page?a=1&b=2"
                cookie = header(response.headers, b"set-cookie") or b""
                attributes = [a.strip() for a in cookie.split(b";")]
                assert attributes[0] == b"scalebox_port_token=" + token.encode()
                assert {b"Path=/", b"HttpOnly", b"Secure", b"SameSite=None"} <= set(attributes)
                assert not any(a.lower().startswith(b"domain") for a in attributes)  # host-only
                [max_age] = [int(a.split(b"=")[1]) for a in attributes if a.startswith(b"Max-Age=")]
                assert 590 <= max_age <= 600
                # The browser comes back with the cookie, among its others.
                jar = [(b"cookie", b"theme=dark; scalebox_port_token=" + token.encode() + b"; lang=en")]
                response, body = await fetch(tls, get(p, "/page?a=1&b=2", headers=jar))
                assert response.status_code == 200
                assert echoed(body)["target"] == "/page?a=1&b=2"
                assert echoed_headers(body)["cookie"] == ["theme=dark; lang=en"]
                # A POST with ?token= is served as it is, the token taken off the target.
                response, body = await fetch(tls, get(p, f"/submit?token={token}", method="POST"))
                assert response.status_code == 200 and echoed(body)["target"] == "/submit"
                # Over plain HTTP the cookie cannot be Secure (SameSite=None would then be dropped).
                plain = await gw.plain()
                response, _ = await fetch(plain, get(p, f"/?token={token}"))
                cookie = header(response.headers, b"set-cookie") or b""
                assert b"Secure" not in cookie and b"SameSite=Lax" in cookie


async def test_a_public_port_passes_token_parameters_and_cookies_to_the_service() -> None:
    with trio.fail_after(DEADLINE):
        async with upstream() as up, gateway(record(port(up.port))) as gw:
            client = await gw.plain()
            jar = [(b"cookie", b"scalebox_port_token=abc"), (b"x-access-token", b"the-apps-own")]
            response, body = await fetch(client, get(up.port, "/cb?token=xyz", headers=jar))
            assert response.status_code == 200
            assert echoed(body)["target"] == "/cb?token=xyz"
            assert echoed_headers(body)["cookie"] == ["scalebox_port_token=abc"]
            assert echoed_headers(body)["x-access-token"] == ["the-apps-own"]


async def test_a_websocket_to_a_private_port_passes_with_the_cookie_only() -> None:
    with trio.fail_after(DEADLINE):
        async with upstream(ws_echo_handler) as up:
            p = up.port
            token = mint_port_token(SECRET, SID, "tok1")
            async with gateway(record(port(p, access="private"), tokens=[grant("tok1", p)])) as gw:
                refused = await gw.tls(host(p).decode())
                with pytest.raises(AssertionError):
                    await websocket_echo_roundtrip(refused, host(p).decode(), ["no"])
                stream = await gw.tls(host(p).decode())
                cookie = f"scalebox_port_token={token}"
                echoed_back = await websocket_echo_roundtrip(stream, host(p).decode(), ["hi"], cookie=cookie)
                assert echoed_back == ["hi"]


async def test_an_http_request_for_a_tcp_port_is_told_to_use_tls() -> None:
    with trio.fail_after(DEADLINE):
        async with gateway(record(port(5432, "tcp"))) as gw:
            client = await gw.plain()
            response, body = await fetch(client, get(5432))
            assert response.status_code == 421 and b"declared tcp" in body


# -- tcp and tls ports -------------------------------------------------------------------


@asynccontextmanager
async def raw_echo(tls_context: ssl.SSLContext | None = None) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A TCP (or TLS) server that echoes "echo:" + each chunk, and remembers what it read."""
    seen: list[bytes] = []

    async def serve(stream: trio.SocketStream) -> None:
        conn: trio.abc.Stream = stream
        if tls_context is not None:
            conn = trio.SSLStream(stream, tls_context, server_side=True)
        try:
            while data := await conn.receive_some(65536):
                seen.append(bytes(data))
                await conn.send_all(b"echo:" + data)
        except trio.BrokenResourceError:
            pass

    async with trio.open_nursery() as nursery:
        [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
        nursery.start_soon(trio.serve_listeners, serve, [listener])
        try:
            yield listener.socket.getsockname()[1], seen
        finally:
            nursery.cancel_scope.cancel()


async def test_a_tcp_port_gets_the_plaintext_of_a_tls_connection_chosen_by_sni() -> None:
    with trio.fail_after(DEADLINE):
        async with raw_echo() as (p, seen), gateway(record(port(p, "tcp"))) as gw:
            stream = await gw.tls(host(p).decode())
            await stream.send_all(b"PING\r\n")
            assert await recv_exactly(stream, 11) == b"echo:PING\r\n"
            assert seen == [b"PING\r\n"]  # plaintext: TLS ended at the gateway
            await stream.aclose()


async def test_a_tls_port_is_passed_through_and_the_client_sees_the_sandboxs_certificate() -> None:
    own = SANDBOX_CA.issue_cert("*." + DOMAIN)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    own.configure_cert(server_ctx)
    with trio.fail_after(DEADLINE):
        async with raw_echo(server_ctx) as (p, seen), gateway(record(port(p, "tls"))) as gw:
            client_ctx = ssl.create_default_context()
            SANDBOX_CA.configure_trust(client_ctx)
            stream = await gw.tls(host(p).decode(), client_ctx)
            own_der = ssl.PEM_cert_to_DER_cert(own.cert_chain_pems[0].bytes().decode())
            assert stream.getpeercert(binary_form=True) == own_der
            await stream.send_all(b"secret")
            assert await recv_exactly(stream, 11) == b"echo:secret"
            assert seen == [b"secret"]
            # The gateway's own certificate would not verify against the sandbox's CA:
            # the handshake above could only succeed with the sandbox's certificate.
            with pytest.raises(trio.BrokenResourceError):
                await gw.tls(f"{SID}.{DOMAIN}", client_ctx)


async def test_psql_style_sslrequest_then_tls_reaches_a_tcp_port() -> None:
    with trio.fail_after(DEADLINE):
        async with raw_echo() as (p, seen), gateway(record(port(p, "tcp"))) as gw:
            raw = await trio.open_tcp_stream("127.0.0.1", gw.port)
            await raw.send_all(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")  # SSLRequest
            assert await recv_exactly(raw, 1) == b"S"
            ctx = ssl.create_default_context(cafile=str(CA_PEM))
            stream = trio.SSLStream(raw, ctx, server_hostname=host(p).decode())
            await stream.send_all(b"startup")
            assert await recv_exactly(stream, 12) == b"echo:startup"
            assert seen == [b"startup"]


async def test_a_stream_for_a_stopped_sandbox_or_a_dead_port_is_closed(log_events: list[dict[str, Any]]) -> None:
    with trio.fail_after(DEADLINE):
        async with raw_echo() as (p, _):
            pass  # nothing listens on p any more
        async with gateway(record(port(p, "tcp"), port(p + 1, "tls"), state=State.PAUSED)) as gw:
            raw = await trio.open_tcp_stream("127.0.0.1", gw.port)
            ctx = ssl.create_default_context(cafile=str(CA_PEM))
            stream = trio.SSLStream(raw, ctx, server_hostname=host(p + 1).decode())
            with pytest.raises(trio.BrokenResourceError):
                await stream.do_handshake()
            gw.rows.set(replace(gw.rows.rec, state=State.RUNNING))
            stream = await gw.tls(host(p).decode())
            assert await read_until_eof(stream) == b""
    outcomes = [(e.get("port"), e["outcome"]) for e in log_events if e["event"] == "gateway.connection"]
    assert (None, "sandbox_not_running") in outcomes
    assert (p, "upstream_unavailable") in outcomes
