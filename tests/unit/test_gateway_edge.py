"""The gateway's edge on loopback: connection and sandbox caps, the access log, certificate reload, the body budget."""

from __future__ import annotations

import dataclasses
import hashlib
import random
import tempfile
from pathlib import Path
from typing import Any

import h11
import trio

from appliance.workers import reload_tls
from gateway.access import Forward, Verdict
from gateway.limits import ConnectionLimits
from gateway.tls.identity import load_server_tls
from gateway.upstream import TcpAddress
from tests.unit.test_gateway_hostile import connect_without_sni
from tests.unit.test_gateway_proxy import (
    CA,
    CERT_PEM,
    DEADLINE,
    KEY_PEM,
    Peer,
    Upstream,
    echoed,
    fetch,
    forward_to,
    get,
    quick_limits,
    running_gateway,
    upstream,
    websocket_echo_roundtrip,
    ws_echo_handler,
)

# -- connections in all, per process -------------------------------------------------------


async def test_a_full_process_stops_accepting_and_serves_the_next_connection_when_one_ends(
    log_events: list[dict[str, Any]],
) -> None:
    limits = dataclasses.replace(
        quick_limits(), sniff_timeout=5.0, connections=ConnectionLimits(max_connections=3, max_per_address=100)
    )
    with trio.fail_after(DEADLINE):
        async with upstream() as a, running_gateway({"alpha.test": forward_to(a)}, limits=limits) as gw:
            served = await gw.client()
            response, _ = await fetch(served, get("/1"))
            assert response.status_code == 200
            silent = [await gw.connect(), await gw.connect()]
            await trio.sleep(0.05)
            assert gw.gateway.open_connections == 3
            # The kernel completes the handshake; the gateway does not take the connection.
            waiting = await gw.client()
            await waiting.send(get("/waiting"), h11.EndOfMessage())
            with trio.move_on_after(0.3) as not_served:
                await waiting.read_response()
            assert not_served.cancelled_caught
            # the connections it holds are served all the while
            response, _ = await fetch(served, get("/2"))
            assert response.status_code == 200
            # one ends: the waiting one is taken and answered
            await silent[0].aclose()
            began = trio.current_time()
            response, body = await waiting.read_response()
            assert (response.status_code, echoed(body)["target"]) == (200, "/waiting")
            assert trio.current_time() - began < 0.3
            for stream in (served.stream, waiting.stream, silent[1]):
                await stream.aclose()
    # logged when the process becomes full, not for every connection that waits
    [full] = [e for e in log_events if e["event"] == "gateway.at_capacity"]
    assert full["limit"] == 3


# -- exchanges per sandbox --------------------------------------------------------------------


async def test_exchanges_per_sandbox_are_capped_with_503_and_other_sandboxes_go_on(
    log_events: list[dict[str, Any]],
) -> None:
    release = trio.Event()
    holding = 0

    async def hold_some(up: Upstream, stream: trio.SocketStream) -> None:
        nonlocal holding
        peer = Peer(stream, h11.SERVER)
        while (got := await peer.read_request()) is not None:
            if got[0].target == b"/hold":
                holding += 1
                await release.wait()
            await peer.respond(200, got[0].target)
            if not peer.next_cycle():
                return

    limits = quick_limits()
    limits = dataclasses.replace(limits, http=dataclasses.replace(limits.http, max_exchanges_per_sandbox=2))
    with trio.fail_after(DEADLINE):
        async with upstream(hold_some) as a:
            address = TcpAddress("127.0.0.1", a.port)
            routes: dict[str, Verdict] = {
                "one.test": Forward(address, "port of sbx-one", "sbx-one", a.port),
                "two.test": Forward(address, "port of sbx-two", "sbx-two", a.port),
            }
            async with running_gateway(routes, limits=limits) as gw:
                held = [await gw.client(), await gw.client()]
                for client in held:
                    await client.send(get("/hold", host=b"one.test"), h11.EndOfMessage())
                while holding < 2:
                    await trio.sleep(0.01)
                third = await gw.client()
                response, body = await fetch(third, get("/third", host=b"one.test"))
                assert response.status_code == 503
                reply = echoed(body)
                assert reply["error"] == "sandbox_busy" and "sbx-one" in reply["message"]
                # another sandbox is not held back
                other = await gw.client()
                response, body = await fetch(other, get("/other", host=b"two.test"))
                assert (response.status_code, body) == (200, b"/other")
                release.set()
                for client in held:
                    response, body = await client.read_response()
                    assert (response.status_code, body) == (200, b"/hold")
                # the refusal kept the connection, and the slots are back (once the
                # exchanges have ended, just after their responses went out)
                await trio.sleep(0.05)
                response, body = await fetch(third, get("/third", host=b"one.test"))
                assert (response.status_code, body) == (200, b"/third")
                for client in (*held, third, other):
                    await client.stream.aclose()
    busy = [e for e in log_events if e["event"] == "gateway.request" and e["status"] == 503]
    assert [(e["sandbox"], e["outcome"]) for e in busy] == [("sbx-one", "sandbox_busy")]


# -- the access log ---------------------------------------------------------------------------


async def test_one_access_log_line_per_request_with_sandbox_port_status_bytes_and_duration(
    log_events: list[dict[str, Any]],
) -> None:
    with trio.fail_after(DEADLINE):
        async with upstream() as a, upstream(ws_echo_handler) as w:
            routes: dict[str, Verdict] = {"alpha.test": forward_to(a), "ws.test": forward_to(w)}
            async with running_gateway(routes) as gw:
                client = await gw.client()
                post = h11.Request(
                    method="POST",
                    target="/p?secret=1",
                    headers=[(b"host", b"alpha.test"), (b"content-length", b"5"), (b"x-request-id", b"rid-7")],
                )
                response, body = await fetch(client, post, b"hello")
                assert response.status_code == 200
                response, _ = await fetch(client, get(host=b"nowhere.test"))
                assert response.status_code == 404
                await client.stream.aclose()
                stream = await gw.connect()
                assert await websocket_echo_roundtrip(stream, "ws.test", ["x" * 1000]) == ["x" * 1000]
                await stream.aclose()
                await trio.sleep(0.05)
    lines = [e for e in log_events if e["event"] == "gateway.request"]
    assert len(lines) == 3
    posted, refused, tunnel = lines
    assert posted["request_id"] == "rid-7"
    assert (posted["method"], posted["host"], posted["path"]) == ("POST", "alpha.test", "/p")
    assert (posted["sandbox"], posted["port"], posted["status"], posted["outcome"]) == ("sbx-test", a.port, 200, "ok")
    head = b"POST /p?secret=1 HTTP/1.1\r\nhost: alpha.test\r\ncontent-length: 5\r\nx-request-id: rid-7\r\n\r\n"
    assert posted["bytes_in"] == len(head) + 5
    assert posted["bytes_out"] > len(body) > 0
    assert posted["ms"] >= 0
    assert (refused["sandbox"], refused["status"], refused["outcome"]) == (None, 404, "unknown_host")
    assert refused["bytes_out"] > 0
    # a tunnel counts what went through it both ways
    assert (tunnel["status"], tunnel["sandbox"]) == (101, "sbx-test")
    assert tunnel["bytes_in"] > 1000 and tunnel["bytes_out"] > 1000


# -- the whole-body budget -------------------------------------------------------------------


async def test_an_upstream_slow_to_read_does_not_use_up_the_clients_body_budget() -> None:
    size = 8 * 1024 * 1024
    payload = random.Random(8).randbytes(size)

    async def read_late(up: Upstream, stream: trio.SocketStream) -> None:
        peer = Peer(stream, h11.SERVER)
        await trio.sleep(0.6)  # the gateway's writes back up meanwhile
        got = await peer.read_request()
        assert got is not None
        await peer.respond(200, hashlib.sha256(got[1]).hexdigest().encode())

    # 0.2 s of waiting for the client in all, and bytes buy no more: only the time the
    # gateway spends waiting for the client counts, not for the upstream.
    limits = quick_limits(request_timeout=0.2, body_min_rate=1e12, body_idle_timeout=1.0)
    with trio.fail_after(DEADLINE):
        async with upstream(read_late) as a, running_gateway({"alpha.test": forward_to(a)}, limits=limits) as gw:
            client = await gw.client()
            put = h11.Request(
                method="PUT", target="/", headers=[(b"host", b"alpha.test"), (b"content-length", str(size).encode())]
            )
            response, body = await fetch(client, put, payload)
            assert (response.status_code, body) == (200, hashlib.sha256(payload).hexdigest().encode())
            await client.stream.aclose()


async def test_bytes_received_extend_the_body_budget() -> None:
    # 0.3 s of waiting, plus 1 s per 10 bytes: 40 bytes, one every 30 ms (1.2 s of
    # waiting in all), pass; the bare 0.3 s would cut the body after 10 bytes.
    limits = quick_limits(request_timeout=0.3, body_min_rate=10.0, body_idle_timeout=0.2, upstream_idle_timeout=5.0)
    with trio.fail_after(DEADLINE):
        async with upstream() as a, running_gateway({"alpha.test": forward_to(a)}, limits=limits) as gw:
            client = await gw.client()
            post = h11.Request(
                method="POST", target="/", headers=[(b"host", b"alpha.test"), (b"content-length", b"40")]
            )
            await client.send(post)
            for _ in range(40):
                await trio.sleep(0.03)
                await client.send(h11.Data(data=b"x"))
            await client.send(h11.EndOfMessage())
            response, body = await client.read_response()
            assert response.status_code == 200 and echoed(body)["body"] == "x" * 40
            await client.stream.aclose()


# -- certificate reload ----------------------------------------------------------------------


def write_pair(names: tuple[str, ...]) -> tuple[Path, Path]:
    cert = CA.issue_cert(*names)
    where = Path(tempfile.mkdtemp(prefix="gateway-reload-"))
    cert.cert_chain_pems[0].write_to_path(str(where / "cert.pem"))
    cert.private_key_pem.write_to_path(str(where / "key.pem"))
    return where / "cert.pem", where / "key.pem"


def serial(stream: trio.SSLStream[trio.SocketStream]) -> str:
    cert = stream.getpeercert()
    assert cert is not None
    return str(cert["serialNumber"])


async def test_reloading_the_certificate_keeps_open_connections_and_serves_new_ones_the_new_one(
    log_events: list[dict[str, Any]],
) -> None:
    new_cert, new_key = write_pair(("alpha.test", "gamma.test"))
    with trio.fail_after(DEADLINE):
        async with upstream() as a:
            routes: dict[str, Verdict] = {name: forward_to(a) for name in ("alpha.test", "gamma.test")}
            async with running_gateway(routes) as gw:
                kept = await gw.connect_tls("alpha.test")
                old_serial = serial(kept)
                kept_client = Peer(kept, h11.CLIENT)
                response, _ = await fetch(kept_client, get("/before"))
                assert response.status_code == 200

                assert reload_tls(gw.gateway, new_cert, new_key)

                # the open connection goes on, with the certificate it was shown
                response, body = await fetch(kept_client, get("/after"))
                assert (response.status_code, echoed(body)["target"]) == (200, "/after")
                assert serial(kept) == old_serial
                # a new handshake gets the new certificate (only it is valid for gamma.test)
                fresh = await gw.connect_tls("gamma.test")
                assert serial(fresh) != old_serial
                response, _ = await fetch(Peer(fresh, h11.CLIENT), get("/new", host=b"gamma.test"))
                assert response.status_code == 200
                # and no-SNI clients are judged by the new certificate's names
                bare = Peer(await connect_without_sni(gw), h11.CLIENT)
                response, _ = await fetch(bare, get("/bare", host=b"gamma.test"))
                assert response.status_code == 200

                # a pair that does not load leaves the current one in place
                assert not reload_tls(gw.gateway, new_cert, KEY_PEM)
                again = await gw.connect_tls("gamma.test")
                assert serial(again) == serial(fresh)
                for stream in (kept, fresh, bare.stream, again):
                    await stream.aclose()
    assert [e["names"] for e in log_events if e["event"] == "gateway.tls_reloaded"] == [["alpha.test", "gamma.test"]]
    [failed] = [e for e in log_events if e["event"] == "gateway.tls_reload_failed"]
    assert "does not match" in failed["error"] or "cannot load" in failed["error"]
    assert load_server_tls(CERT_PEM, KEY_PEM).names == ("alpha.test", "beta.test")


async def test_a_tls_connection_survives_many_reloads() -> None:
    pairs = [write_pair(("alpha.test",)) for _ in range(3)]
    with trio.fail_after(DEADLINE):
        async with upstream() as a, running_gateway({"alpha.test": forward_to(a)}) as gw:
            kept = Peer(await gw.connect_tls(), h11.CLIENT)
            for i, (cert, key) in enumerate(pairs):
                assert reload_tls(gw.gateway, cert, key)
                response, body = await fetch(kept, get(f"/{i}"))
                assert (response.status_code, echoed(body)["target"]) == (200, f"/{i}")
            await kept.stream.aclose()
