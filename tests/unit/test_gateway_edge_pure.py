"""The gateway's edge decisions without a network: request heads, certificate names, caps, the body budget."""

from __future__ import annotations

import h11
import pytest
import trustme

from gateway.caps import Counts, address_key
from gateway.limits import HttpLimits, body_wait
from gateway.requesthead import RequestHead, read_head
from gateway.tls.names import certificate_names, covers, misdirected

LIMITS = HttpLimits(max_request_line=100, max_head=400, max_headers=6)


def head_of(raw: bytes, limits: HttpLimits = LIMITS) -> RequestHead:
    """Parse `raw` with h11 as the gateway does, then read the head."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    req = conn.next_event()
    assert isinstance(req, h11.Request), req
    return read_head(req, raw, len(raw) - len(conn.trailing_data[0]), limits)


def refusal(raw: bytes, limits: HttpLimits = LIMITS) -> tuple[int, str] | None:
    got = head_of(raw, limits).refusal
    return None if got is None else (got.status, got.message)


# -- request heads ---------------------------------------------------------------------


def test_one_pass_finds_the_headers_the_gateway_reads() -> None:
    head = head_of(
        b"POST /x HTTP/1.1\r\nHost: a.test\r\nX-Access-Token: t\r\nX-Request-Id: r1\r\nAccept: text/html\r\n"
        b"Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
    )
    assert (head.host, head.access_token, head.request_id, head.accept) == (b"a.test", b"t", b"r1", b"text/html")
    assert (head.content_type, head.content_length, head.transfer_encoding) == (b"text/plain", b"2", None)
    assert head.refusal is None
    assert not head.is_upgrade


def test_connection_tokens_from_every_connection_header_and_upgrades() -> None:
    head = head_of(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-A\r\nConnection: Upgrade\r\nUpgrade: ws\r\n\r\n"
    )
    assert head.connection == {b"keep-alive", b"x-a", b"upgrade"}
    assert head.is_upgrade


def test_an_ordinary_head_and_its_body_bytes_pass() -> None:
    # Body bytes are not the head's: a body may hold anything.
    assert refusal(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\n\x01\n \x7f") is None


@pytest.mark.parametrize(
    ("raw", "status", "why"),
    [
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "together"),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", 400, "together"),
        (b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "HTTP/1.0"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", 400, "folding"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n", 400, "folding"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x01c\r\n\r\n", 400, "control character 0x01"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x1bc\r\n\r\n", 400, "control character 0x1b"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x7fc\r\n\r\n", 400, "control character 0x7f"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x08c\r\n\r\n", 400, "control character 0x08"),
        (b"GET /" + b"a" * 100 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414, "request line of"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 400 + b"\r\n\r\n", 431, "request head of"),
        (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-N: 1\r\n" * 6 + b"\r\n", 431, "7 header fields"),
    ],
)
def test_refused_shapes(raw: bytes, status: int, why: str) -> None:
    got = refusal(raw)
    assert got is not None and got[0] == status, got
    assert why in got[1]


def test_tab_and_obs_text_in_values_are_allowed() -> None:
    assert refusal(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\tc \xe9\r\n\r\n") is None


def test_limits_at_their_exact_values_pass() -> None:
    target = b"/" + b"a" * (100 - len(b"GET") - len(b"/") - len(b"  HTTP/1.1"))
    assert refusal(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n") is None
    assert refusal(b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-N: 1\r\n" * 5 + b"\r\n") is None


# -- certificate names and the SNI rule --------------------------------------------------


def test_certificate_names_are_its_dns_and_ip_alt_names() -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("Alpha.test", "*.sbx.test", "127.0.0.1")
    assert certificate_names(cert.cert_chain_pems[0].bytes()) == ("alpha.test", "*.sbx.test", "127.0.0.1")
    with pytest.raises(ValueError):
        certificate_names(b"not a certificate")


def test_a_wildcard_covers_exactly_one_label() -> None:
    names = ("sbx.test", "*.sbx.test")
    assert covers(names, "sbx.test")
    assert covers(names, "api.sbx.test")
    assert covers(names, "8080-sbx-abcd.sbx.test")
    assert not covers(names, "a.b.sbx.test")
    assert not covers(names, "other.test")
    assert not covers(names, "test")


def test_misdirected_with_and_without_sni() -> None:
    names = ("*.sbx.test",)
    assert misdirected("api.sbx.test", "api.sbx.test", names) is None
    assert "opened for api.sbx.test" in str(misdirected("sbx-a.sbx.test", "api.sbx.test", names))
    # no SNI: whatever the certificate covers, and nothing else
    assert misdirected("sbx-a.sbx.test", None, names) is None
    assert "does not cover evil.test" in str(misdirected("evil.test", None, names))


# -- caps ------------------------------------------------------------------------------


def test_counts_refuse_past_the_limit_and_give_back() -> None:
    counts: Counts[str] = Counts(2)
    assert counts.take("a") and counts.take("a")
    assert not counts.take("a")
    assert counts.take("b")
    counts.give_back("a")
    assert counts.held("a") == 1
    assert counts.take("a")
    counts.give_back("b")
    assert counts.held("b") == 0


def test_clients_are_counted_by_ipv4_address_or_ipv6_64() -> None:
    assert address_key("10.0.0.1") == "10.0.0.1"
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:10.0.0.1") == "10.0.0.1"
    assert address_key("fe80::1%eth0") == "fe80::/64"


# -- the body's time budget --------------------------------------------------------------


def test_body_wait_is_the_idle_limit_until_the_whole_budget_is_nearer() -> None:
    limits = HttpLimits(body_idle_timeout=5.0, request_timeout=10.0, body_min_rate=100.0)
    assert body_wait(limits, 0.0, 0) == (5.0, False)
    assert body_wait(limits, 7.0, 0) == (3.0, True)
    # bytes received buy time: 1 s per 100 bytes
    assert body_wait(limits, 7.0, 1000) == (5.0, False)
    assert body_wait(limits, 12.0, 0) == (0.0, True)
