"""The pure parts of declared ports: declarations, host port allocation, port tokens,
where a request carries its token, token scopes, stream decisions, and the store's
migration of rows written before ports had protocols and tokens."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from controlplane.errors import BadRequest
from controlplane.ports import allocate_host_port, declare, normalise, parse_port, parse_ports
from controlplane.store import Store
from controlplane.tokens import mint_access_token, mint_port_token, port_token_id
from gateway.access import Grant, PortPolicy, SandboxView, Stream, Wake, decide_stream, grant_refusal
from gateway.credentials import (
    cookie_token,
    find_credential,
    query_token,
    set_cookie,
    without_cookie,
    without_query_token,
)
from gateway.preamble import could_be_preamble, read_preamble
from gateway.routing.table import AgentRoute, PortRoute

SECRET = b"x" * 32


def test_a_declaration_defaults_to_public_http_and_keeps_what_it_says() -> None:
    p = parse_port({"port": 3000}, "port")
    assert (p.port, p.name, p.protocol, p.access, p.host_port) == (3000, "port-3000", "http", "public", None)
    p = parse_port({"port": 5432, "name": "db", "protocol": "tcp", "host_port": True}, "port")
    assert (p.protocol, p.host_port) == ("tcp", 0)
    p = parse_port({"port": 443, "protocol": "tls", "host_port": 40010}, "port")
    assert p.host_port == 40010
    assert parse_port({"port": 1, "protocol": "TCP"}, "p").protocol == "http"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"port": 0}, "from 1 to 65535"),
        ({"port": True}, "integer"),
        ({"port": "80"}, "integer"),
        ({"port": 80, "protocol": "Tcp"}, "one of http, tcp, tls"),
        ({"port": 80, "access": "private", "protocol": "tls"}, "private port must be http"),
        ({"port": 80, "host_port": "yes"}, "host_port"),
        ({"port": 80, "protocol": "tcp", "host_port": 70000}, "host_port"),
        ({"port": 80, "name": "-x"}, "name"),
        ({"port": 80, "name": "a" * 16}, "name"),
        ([], "must be an object"),
    ],
)
def test_a_bad_declaration_says_what_to_fix(body: object, words: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_port(body, "custom_ports[0]")
    assert words in caught.value.message and "custom_ports[0]" in caught.value.message


def test_a_list_needs_unique_ports_and_names() -> None:
    assert parse_ports(None) == []
    with pytest.raises(BadRequest, match="already declared"):
        parse_ports([{"port": 1}, {"port": 1, "name": "other"}])
    with pytest.raises(BadRequest, match="already used"):
        parse_ports([{"port": 1, "name": "a"}, {"port": 2, "name": "a"}])
    with pytest.raises(BadRequest, match="array"):
        parse_ports({"port": 1})


def test_host_ports_are_allocated_from_the_range_around_those_used() -> None:
    reqs = parse_ports(
        [{"port": 1, "protocol": "tcp", "host_port": True}, {"port": 2, "protocol": "tls", "host_port": True}]
    )
    stored = declare(reqs, {40000}, (40000, 40003))
    assert [s["host_port"] for s in stored] == [40001, 40002]
    assert allocate_host_port(40003, {40000}, (40000, 40003)) == 40003
    for wanted, used, words in [(40000, {40000}, "taken"), (39999, set(), "range"), (0, {40000, 40001}, "every")]:
        with pytest.raises(BadRequest, match=words):
            allocate_host_port(wanted, used, (40000, 40001))
    with pytest.raises(BadRequest, match="switched off"):
        allocate_host_port(0, set(), None)


def test_rows_from_before_protocols_read_as_public_http() -> None:
    assert normalise({"port": 3000, "name": "web", "protocol": "TCP"}) == {
        "port": 3000,
        "name": "web",
        "protocol": "http",
        "access": "public",
        "host_port": None,
    }


def test_port_tokens_are_bound_to_their_sandbox_and_cannot_be_forged() -> None:
    token = mint_port_token(SECRET, "sbx-a", "abc123")
    assert port_token_id(SECRET, "sbx-a", token) == "abc123"
    assert port_token_id(SECRET, "sbx-b", token) is None  # moved to another sandbox
    assert port_token_id(b"y" * 32, "sbx-a", token) is None  # another appliance's
    assert port_token_id(SECRET, "sbx-a", token.replace("abc123", "abc124")) is None
    assert port_token_id(SECRET, "sbx-a", mint_access_token(SECRET, "sbx-a")) is None
    for junk in (None, "", "spt_", "spt_.x", "spt_a b.x", "spt_" + "a" * 200):
        assert port_token_id(SECRET, "sbx-a", junk) is None


def test_where_a_token_comes_from_in_order_of_precedence() -> None:
    cookie = [b"a=1; scalebox_port_token=C; b=2"]
    found = find_credential(b"/x?token=Q", b"H", cookie)
    assert found is not None and (found.token, found.source) == (b"H", "header")
    found = find_credential(b"/x?token=Q", None, cookie)
    assert found is not None and (found.token, found.source) == (b"Q", "query")
    found = find_credential(b"/x", None, cookie)
    assert found is not None and (found.token, found.source) == (b"C", "cookie")
    assert find_credential(b"/x?mytoken=1", None, [b"other_scalebox_port_token=1"]) is None
    assert query_token(b"/x?a=1&token=a%2Bb") == b"a+b"
    assert cookie_token([b'scalebox_port_token="quoted"']) == b"quoted"


def test_the_gateways_credentials_are_taken_off_what_goes_on() -> None:
    assert without_query_token(b"/p?a=1&token=t&b=2") == b"/p?a=1&b=2"
    assert without_query_token(b"/p?token=t") == b"/p"
    assert without_query_token(b"/p?tokens=t") == b"/p?tokens=t"
    assert without_cookie(b"a=1; scalebox_port_token=t;b=2") == b"a=1; b=2"
    assert without_cookie(b"scalebox_port_token=t") == b""
    assert without_cookie(b"a=1") == b"a=1"
    assert set_cookie(b"t", secure=True, max_age=-5).endswith(b"Max-Age=0")
    assert b"Max-Age" not in set_cookie(b"t", secure=False, max_age=None)


@pytest.mark.parametrize(
    ("path", "prefix", "allowed"),
    [
        ("/api", "/api", True),
        ("/api/x", "/api", True),
        ("/apix", "/api", False),
        ("/api/x", "/api/", True),
        ("/api", "/api/", False),
        ("/api/../admin", "/api", False),
        ("/api/%2E%2E/admin", "/api", False),
        ("/api/./x", "/api", False),
    ],
)
def test_a_path_prefix_is_matched_by_whole_segments(path: str, prefix: str, allowed: bool) -> None:
    refused = grant_refusal(Grant(port=1, path_prefix=prefix), "GET", path, now=0)
    assert (refused is None) is allowed


def test_a_grant_refuses_late_requests_and_other_methods() -> None:
    g = Grant(port=1, methods=frozenset({"GET"}), expires_at=100.0)
    assert grant_refusal(g, "GET", "/", now=99.9) is None
    refused = grant_refusal(g, "GET", "/", now=100.0)
    assert refused is not None and refused.status == 401
    refused = grant_refusal(g, "POST", "/", now=0)
    assert refused is not None and refused.status == 403
    assert grant_refusal(None, "POST", "/", now=1e12) is None


def test_stream_decisions_only_for_tcp_and_tls_ports() -> None:
    ports = {5432: PortPolicy("tcp"), 443: PortPolicy("tls"), 80: PortPolicy("http")}
    view = SandboxView(state="running", ip="10.0.0.2", ports=ports)

    def lookup(sid: str) -> SandboxView | None:
        return view if sid == "sbx-aaaa" else None

    tcp = decide_stream(PortRoute("sbx-aaaa", 5432), lookup=lookup)
    assert isinstance(tcp, Stream) and not tcp.passthrough and (tcp.sandbox_id, tcp.port) == ("sbx-aaaa", 5432)
    tls = decide_stream(PortRoute("sbx-aaaa", 443), lookup=lookup)
    assert isinstance(tls, Stream) and tls.passthrough and str(tls.address) == "10.0.0.2:443"
    for route in (
        PortRoute("sbx-aaaa", 80),
        PortRoute("sbx-aaaa", 81),
        AgentRoute("sbx-aaaa"),
        PortRoute("sbx-bbbb", 443),
    ):
        assert decide_stream(route, lookup=lookup) is None
    view = SandboxView(state="paused", ip="10.0.0.2", ports=ports, wakeable=True)
    assert decide_stream(PortRoute("sbx-aaaa", 443), lookup=lookup) == Wake("sbx-aaaa")


def test_the_postgres_preamble_is_recognised_and_nothing_else() -> None:
    ssl_request = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
    assert read_preamble(ssl_request) is not None and read_preamble(ssl_request).reply == b"S"  # type: ignore[union-attr]
    gss = read_preamble(b"\x00\x00\x00\x08\x04\xd2\x16\x30")
    assert gss is not None and (gss.reply, gss.tls_follows) == (b"N", False)
    assert read_preamble(b"GET / HTTP/1.1\r\n") is None
    assert could_be_preamble(b"\x00\x00") and not could_be_preamble(b"\x00\x01")


def test_an_old_data_dir_gains_the_port_tokens_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE sandboxes (id TEXT PRIMARY KEY, template_id TEXT NOT NULL, state TEXT NOT NULL, reason TEXT,"
        " container_id TEXT, ip TEXT, cpu_count INTEGER NOT NULL, memory_mb INTEGER NOT NULL,"
        " storage_gb INTEGER NOT NULL, timeout INTEGER NOT NULL, auto_pause INTEGER NOT NULL,"
        " allow_internet_access INTEGER NOT NULL, secure INTEGER NOT NULL, is_async INTEGER NOT NULL, name TEXT,"
        " metadata TEXT NOT NULL, env_vars TEXT NOT NULL, custom_ports TEXT NOT NULL, created_at REAL NOT NULL,"
        " updated_at REAL NOT NULL, started_at REAL, timeout_at REAL, paused_at REAL, ended_at REAL);"
        "INSERT INTO sandboxes VALUES ('sbx-old1', 'base', 'running', NULL, 'c', '10.0.0.9',"
        " 1, 512, 0, 300, 0, 1, 1, 0,"
        ' NULL, \'{}\', \'{}\', \'[{"port": 3000, "name": "web", "protocol": "TCP"}]\', 1, 1, 1, NULL, NULL, NULL);'
    )
    db.close()
    store = Store(path)
    rec = store.get_sandbox("sbx-old1")
    assert rec is not None and rec.port_tokens == [] and normalise(rec.custom_ports[0])["protocol"] == "http"
    store.close()
