"""controlplane.network.egressproxy: what the first bytes say, what is let out, and the
proxy itself on loopback (with the original destination injected)."""

from __future__ import annotations

import functools
import ipaddress
import socket
import ssl
import struct
from collections.abc import Iterable
from typing import Any

import pytest
import trio

from controlplane.egress import Address, EgressPolicy, policy_of
from controlplane.network.egressproxy import (
    OTHER,
    SNIFF_LIMIT,
    EgressProxy,
    Sniffed,
    Verdict,
    decide,
    is_blocked,
    original_destination,
    parse_sockaddr_in,
    sniff,
)

ALLOWLIST = policy_of(True, {"allow_out": ["allowed.example", "*.cdn.example", "198.51.100.0/24"]})
PUBLIC = ipaddress.ip_address("203.0.113.7")


def client_hello(server_hostname: str | None) -> bytes:
    """A real ClientHello, as Python's TLS client sends it."""
    context = ssl.create_default_context()
    if server_hostname is None:
        context.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


# --- sniff ----------------------------------------------------------------------


def test_sniff_tls_finds_the_sni_and_waits_for_the_whole_hello() -> None:
    hello = client_hello("A.Example")
    assert sniff(hello) == Sniffed("tls", ("a.example",))
    assert sniff(hello + b"more bytes after the hello") == Sniffed("tls", ("a.example",))
    assert sniff(hello[:1]) is None
    assert sniff(hello[: len(hello) // 2]) is None
    assert sniff(client_hello(None)) == Sniffed("tls", ())  # no SNI (an IP literal, or ECH): no name
    assert sniff(b"\x16\x03\x01\x00\x00") == OTHER  # a handshake record cannot be empty


def test_sniff_http_host_with_port_ipv6_and_case() -> None:
    assert sniff(b"GET / HTTP/1.1\r\nUser-Agent: x\r\nHost: WWW.Example.com:8080\r\n\r\n") == Sniffed(
        "http", ("www.example.com",)
    )
    assert sniff(b"GET / HTTP/1.1\r\nhost: [2001:DB8::1]:80\r\n\r\nbody") == Sniffed("http", ("2001:db8::1",))
    assert sniff(b"GET / HTTP/1.0\r\n\r\n") == Sniffed("http", ())  # no Host at all: the address decides
    assert sniff(b"GET / HTTP/1.1\r\nHost: a.example.\r\n\r\n") == Sniffed("http", ("a.example.",))


def test_sniff_http_absolute_form_connect_and_duplicate_hosts_give_every_name() -> None:
    assert sniff(b"GET http://user@Target.example:81/x HTTP/1.1\r\nHost: other.example\r\n\r\n") == Sniffed(
        "http", ("target.example", "other.example")
    )
    assert sniff(b"GET http://same.example/ HTTP/1.1\r\nHost: same.example\r\n\r\n") == Sniffed(
        "http", ("same.example",)
    )
    assert sniff(b"CONNECT tunnel.example:443 HTTP/1.1\r\nHost: tunnel.example:443\r\n\r\n") == Sniffed(
        "http", ("tunnel.example",)
    )
    assert sniff(b"GET / HTTP/1.1\r\nHost: good.example\r\nHost: evil.example\r\n\r\n") == Sniffed(
        "http", ("good.example", "evil.example")
    )


def test_sniff_http_sees_through_bare_lf_and_leading_empty_lines() -> None:
    # Servers accept both; a Host hidden behind them would otherwise go unchecked.
    assert sniff(b"GET / HTTP/1.1\nHost: evil.example\n\n") == Sniffed("http", ("evil.example",))
    assert sniff(b"\r\n\r\nGET / HTTP/1.1\r\nHost: evil.example\r\n\r\n") == Sniffed("http", ("evil.example",))


def test_sniff_partial_heads_wait_and_garbage_is_other() -> None:
    assert sniff(b"") is None
    assert sniff(b"GE") is None
    assert sniff(b"GET /index.html HTTP/1.") is None
    assert sniff(b"GET / HTTP/1.1\r") is None
    assert sniff(b"GET / HTTP/1.1\r\nHost: a.example\r\n") is None
    assert sniff(b"SSH-2.0-OpenSSH_9.6\r\n") == OTHER
    assert sniff(b"get / HTTP/1.1\r\n") == OTHER
    assert sniff(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") == OTHER
    assert sniff(b"\x00\x01\x02binary") == OTHER
    assert sniff(b"GET / HTTP/1.1 extra\r\n") == OTHER


def test_sniff_gives_up_at_the_limit() -> None:
    endless_head = b"GET / HTTP/1.1\r\nHost: a.example\r\n" + b"X-Pad: " + b"a" * SNIFF_LIMIT
    assert sniff(endless_head[: SNIFF_LIMIT - 1]) is None
    assert sniff(endless_head) == OTHER
    assert sniff(b"GET /" + b"a" * SNIFF_LIMIT) == OTHER


# --- decide ---------------------------------------------------------------------


def test_decide_allowlist_by_name_through_the_resolver_and_by_cidr() -> None:
    assert decide(ALLOWLIST, PUBLIC, (), ["allowed.example"]).allowed
    assert decide(ALLOWLIST, PUBLIC, ("allowed.example",), ["allowed.example"], label="TLS SNI").allowed
    assert decide(ALLOWLIST, PUBLIC, ("img.cdn.example",), ["x.cdn.example"]).allowed
    assert decide(ALLOWLIST, ipaddress.ip_address("198.51.100.9"), (), []).allowed
    assert decide(ALLOWLIST, ipaddress.ip_address("198.51.100.9"), ("198.51.100.9",), []).allowed


def test_decide_refuses_a_bare_address_in_allowlist_mode() -> None:
    verdict = decide(ALLOWLIST, PUBLIC, (), [])
    assert not verdict.allowed and verdict.why.startswith("address 203.0.113.7 is not allowed (connect by a name")
    # An allowed name in the SNI does not make an address nobody resolved for it reachable.
    assert not decide(ALLOWLIST, PUBLIC, ("allowed.example",), []).allowed
    # Nor does a name the resolver would have refused.
    assert not decide(ALLOWLIST, PUBLIC, (), ["elsewhere.example"]).allowed


def test_decide_refuses_a_name_the_policy_does_not_allow_on_an_allowed_address() -> None:
    # A shared CDN address handed out for an allowed name, asked for another one.
    verdict = decide(ALLOWLIST, PUBLIC, ("evil.example",), ["allowed.example"], label="TLS SNI")
    assert verdict == Verdict(False, "TLS SNI evil.example is not allowed")
    both = decide(ALLOWLIST, PUBLIC, ("allowed.example", "evil.example"), ["allowed.example"], label="HTTP Host")
    assert both == Verdict(False, "HTTP Host evil.example is not allowed")
    malformed = decide(ALLOWLIST, PUBLIC, ("allowed_example",), ["allowed.example"], label="HTTP Host")
    assert not malformed.allowed and "not a valid name" in malformed.why
    # A trailing dot is the same name.
    assert decide(ALLOWLIST, PUBLIC, ("allowed.example.",), ["allowed.example"]).allowed


def test_decide_deny_wins() -> None:
    policy = policy_of(True, {"allow_out": ["*.example", "203.0.113.0/24"], "deny_out": ["bad.example", "203.0.113.7"]})
    assert decide(policy, PUBLIC, (), []) == Verdict(False, "address 203.0.113.7 is denied")
    other = ipaddress.ip_address("203.0.113.8")
    assert decide(policy, other, (), []).allowed
    assert decide(policy, other, ("bad.example",), []) == Verdict(False, "name bad.example is not allowed")


def test_decide_default_allow_with_a_denied_name() -> None:
    policy = policy_of(True, {"deny_out": ["*.tracker.example"]})
    assert decide(policy, PUBLIC, (), []).allowed  # nothing restricts bare addresses
    assert decide(policy, PUBLIC, ("fine.example",), []).allowed
    refused = decide(policy, PUBLIC, ("ads.tracker.example",), [], label="TLS SNI")
    assert refused == Verdict(False, "TLS SNI ads.tracker.example is not allowed")
    # A bare connection to an address handed out for a denied name is that name.
    bare = decide(policy, PUBLIC, (), ["fine.example", "ads.tracker.example"])
    assert not bare.allowed and "ads.tracker.example" in bare.why
    # With a name in the clear, the name decides.
    assert decide(policy, PUBLIC, ("fine.example",), ["ads.tracker.example"]).allowed


def test_decide_lets_any_name_but_a_denied_one_reach_a_cidr_the_allow_list_names() -> None:
    policy = policy_of(True, {"allow_out": ["203.0.113.0/24"], "deny_out": ["bad.example"]})
    assert decide(policy, PUBLIC, ("anything.example",), [], label="TLS SNI").allowed
    assert decide(policy, PUBLIC, ("bad.example",), [], label="TLS SNI") == Verdict(
        False, "TLS SNI bad.example is not allowed"
    )
    # Elsewhere the name still has to be allowed.
    assert not decide(policy, ipaddress.ip_address("198.51.100.1"), ("anything.example",), []).allowed


def test_decide_without_internet_refuses_everything() -> None:
    offline = EgressPolicy(internet=False)
    verdict = decide(offline, PUBLIC, ("allowed.example",), ["allowed.example"])
    assert verdict == Verdict(False, "internet access is off for this sandbox")


@pytest.mark.parametrize(
    "address",
    ["10.1.2.3", "127.0.0.1", "169.254.169.254", "192.168.1.1", "100.64.0.1", "::1", "fe80::1", "fd00::1",
     "::ffff:10.0.0.1"],
)  # fmt: skip
def test_decide_refuses_blocked_ranges_whatever_the_policy(address: str) -> None:
    everything = policy_of(True, {"allow_out": ["0.0.0.0/0", "::/0"]})
    ip = ipaddress.ip_address(address)
    assert is_blocked(ip)
    verdict = decide(everything, ip, (), [])
    assert not verdict.allowed and "blocked range" in verdict.why


def test_public_addresses_are_not_blocked() -> None:
    assert not is_blocked(PUBLIC)
    assert not is_blocked(ipaddress.ip_address("2001:db8::1"))
    assert decide(
        policy_of(True, {"allow_out": ["2001:db8::/32"]}), ipaddress.ip_address("2001:db8::1"), (), []
    ).allowed


# --- original destination -------------------------------------------------------


def test_parse_sockaddr_in() -> None:
    raw = struct.pack("=H", socket.AF_INET) + (8443).to_bytes(2, "big") + socket.inet_aton("198.51.100.7") + bytes(8)
    assert parse_sockaddr_in(raw) == ("198.51.100.7", 8443)
    with pytest.raises(OSError):
        parse_sockaddr_in(struct.pack("=H", socket.AF_INET6) + bytes(14))
    with pytest.raises(OSError):
        parse_sockaddr_in(b"\x02\x00")


async def test_original_destination_of_a_connection_nothing_redirected() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    with listener, trio.socket.socket() as client:
        await client.connect(listener.getsockname())
        accepted, _ = await listener.accept()
        with accepted:
            try:
                found = original_destination(accepted)
            except OSError:
                return  # no conntrack entry (the module is not loaded here): an error, as it should be
            # Conntrack follows it: nothing rewrote it, so it went where it says.
            assert found == listener.getsockname()


# --- the proxy on loopback ------------------------------------------------------


class Upstream:
    """A TCP server on loopback: records what it receives and echoes it; may greet first."""

    def __init__(self, banner: bytes = b"") -> None:
        self.banner = banner
        self.received = b""
        self.connections = 0
        self.done = trio.Event()
        self.port = 0

    async def start(self, nursery: trio.Nursery) -> int:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, self._serve, 0, host="127.0.0.1"))
        self.port = listeners[0].socket.getsockname()[1]
        return self.port

    async def _serve(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        async with stream:
            if self.banner:
                await stream.send_all(self.banner)
            while data := await stream.receive_some():
                self.received += data
                await stream.send_all(data)
        self.done.set()


def loopback_as_public(
    policy: EgressPolicy,
    address: Address,
    names: tuple[str, ...],
    resolved_for: Iterable[str],
    *,
    label: str = "name",
) -> Verdict:
    """The real decision, with the test upstream on 127.0.0.1 (a blocked range) judged
    as if it were a public address."""
    return decide(policy, PUBLIC if address.is_loopback else address, names, resolved_for, label=label)


async def start_proxy(
    nursery: trio.Nursery,
    upstream_port: int,
    *,
    policy: EgressPolicy = ALLOWLIST,
    resolved_for: tuple[str, ...] = ("allowed.example",),
    **options: Any,
) -> int:
    proxy = EgressProxy(
        "127.0.0.1",
        0,
        lambda source: ("sbx1", policy) if source == "127.0.0.1" else None,
        lambda sandbox, address: list(resolved_for),
        **{"decide": loopback_as_public, "original_destination": lambda sock: ("127.0.0.1", upstream_port), **options},
    )
    port: int = await nursery.start(proxy.run)
    return port


async def receive_all(stream: trio.abc.Stream) -> bytes:
    data = b""
    with trio.fail_after(2):
        while chunk := await stream.receive_some():
            data += chunk
    return data


async def expect_reset(stream: trio.abc.Stream) -> None:
    with trio.fail_after(1), pytest.raises(trio.BrokenResourceError) as raised:
        while await stream.receive_some():
            pass
    assert isinstance(raised.value.__cause__, ConnectionResetError)


async def logged(events: list[dict[str, Any]], count: int = 1) -> list[dict[str, Any]]:
    """The egress.connection lines, once `count` are in (the line follows the close)."""
    with trio.fail_after(2):
        while len(lines := [e for e in events if e["event"] == "egress.connection"]) < count:
            await trio.sleep(0.005)
    return lines


async def test_allowed_http_passes_through_with_its_first_bytes(log_events: list[dict[str, Any]]) -> None:
    upstream = Upstream()
    request = b"POST /upload HTTP/1.1\r\nHost: allowed.example\r\nContent-Length: 4\r\n\r\n"
    async with trio.open_nursery() as nursery:
        port = await start_proxy(nursery, await upstream.start(nursery))
        client = await trio.open_tcp_stream("127.0.0.1", port)
        async with client:
            await client.send_all(request)
            await client.send_all(b"body")
            await client.send_eof()
            assert await receive_all(client) == request + b"body"
        assert upstream.received == request + b"body"
        (line,) = await logged(log_events)
        nursery.cancel_scope.cancel()
    assert line["sandbox"] == "sbx1" and line["source"] == "127.0.0.1"
    assert line["destination"] == f"127.0.0.1:{upstream.port}"
    assert (line["kind"], line["names"], line["decision"]) == ("http", ["allowed.example"], "allowed")
    assert line["bytes_out"] == line["bytes_in"] == len(request) + 4
    assert isinstance(line["ms"], int) and line["error"] is None


async def test_refused_http_gets_a_403_that_says_why(log_events: list[dict[str, Any]]) -> None:
    upstream = Upstream()
    async with trio.open_nursery() as nursery:
        port = await start_proxy(nursery, await upstream.start(nursery))
        async with await trio.open_tcp_stream("127.0.0.1", port) as client:
            await client.send_all(b"GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n")
            reply = await receive_all(client)
        (line,) = await logged(log_events)
        nursery.cancel_scope.cancel()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert b"\r\nConnection: close" in head and b"\r\nContent-Type: text/plain" in head
    assert body == b"scalebox egress: HTTP Host evil.example is not allowed\n"
    assert upstream.connections == 0
    assert (line["decision"], line["why"], line["names"]) == (
        "refused",
        "HTTP Host evil.example is not allowed",
        ["evil.example"],
    )


async def test_tls_allowed_passes_through_and_refused_is_reset(log_events: list[dict[str, Any]]) -> None:
    upstream = Upstream()
    good, evil = client_hello("allowed.example"), client_hello("evil.example")
    async with trio.open_nursery() as nursery:
        port = await start_proxy(nursery, await upstream.start(nursery))
        async with await trio.open_tcp_stream("127.0.0.1", port) as client:
            await client.send_all(good)
            await client.send_eof()
            assert await receive_all(client) == good
        async with await trio.open_tcp_stream("127.0.0.1", port) as client:
            await client.send_all(evil)
            await expect_reset(client)
        allowed, refused = await logged(log_events, 2)
        nursery.cancel_scope.cancel()
    assert upstream.received == good and upstream.connections == 1
    assert (allowed["kind"], allowed["names"], allowed["decision"]) == ("tls", ["allowed.example"], "allowed")
    assert (refused["kind"], refused["why"]) == ("tls", "TLS SNI evil.example is not allowed")


async def test_other_protocols_to_an_address_not_allowed_are_reset(log_events: list[dict[str, Any]]) -> None:
    upstream = Upstream()
    async with trio.open_nursery() as nursery:
        port = await start_proxy(nursery, await upstream.start(nursery), resolved_for=())
        async with await trio.open_tcp_stream("127.0.0.1", port) as client:
            await client.send_all(b"\x00\x01 some binary protocol")
            await expect_reset(client)
        (line,) = await logged(log_events)
        nursery.cancel_scope.cancel()
    assert upstream.connections == 0
    assert line["kind"] == "other" and line["why"].startswith("address 203.0.113.7 is not allowed")


async def test_a_server_that_speaks_first_is_reached_without_the_client_saying_anything(
    log_events: list[dict[str, Any]],
) -> None:
    upstream = Upstream(banner=b"SSH-2.0-Test\r\n")
    async with trio.open_nursery() as nursery:
        port = await start_proxy(nursery, await upstream.start(nursery))
        async with await trio.open_tcp_stream("127.0.0.1", port) as client:
            started = trio.current_time()
            with trio.fail_after(1):
                assert await client.receive_some() == b"SSH-2.0-Test\r\n"
            waited = trio.current_time() - started
            await client.send_all(b"SSH-2.0-Client\r\n")
            await client.send_eof()
            assert await receive_all(client) == b"SSH-2.0-Client\r\n"
        (line,) = await logged(log_events)
        nursery.cancel_scope.cancel()
    assert 0.25 <= waited < 1
    assert (line["kind"], line["names"], line["decision"]) == ("other", [], "allowed")
    assert (line["bytes_out"], line["bytes_in"]) == (16, 14 + 16)


async def test_clients_are_waited_for_on_client_first_ports_only(log_events: list[dict[str, Any]]) -> None:
    """On a client-first port a hello that comes late is still read; elsewhere the
    connection is decided by its address once the short wait is over (a known limit)."""
    evil = client_hello("evil.example")
    upstream = Upstream()
    async with trio.open_nursery() as nursery:
        upstream_port = await upstream.start(nursery)
        options: dict[str, Any] = {"server_first_wait": 0.05, "client_first_wait": 2.0}
        client_first = await start_proxy(
            nursery, upstream_port, client_first_ports=frozenset({upstream_port}), **options
        )
        server_first = await start_proxy(nursery, upstream_port, **options)
        async with await trio.open_tcp_stream("127.0.0.1", client_first) as client:
            await trio.sleep(0.2)
            await client.send_all(evil)
            await expect_reset(client)
        async with await trio.open_tcp_stream("127.0.0.1", server_first) as client:
            await trio.sleep(0.2)
            await client.send_all(evil)
            await client.send_eof()
            assert await receive_all(client) == evil
        refused, allowed = await logged(log_events, 2)
        nursery.cancel_scope.cancel()
    assert (refused["kind"], refused["decision"]) == ("tls", "refused")
    assert (allowed["kind"], allowed["names"], allowed["decision"]) == ("other", [], "allowed")


async def test_a_client_that_has_begun_its_hello_gets_time_to_finish_it(log_events: list[dict[str, Any]]) -> None:
    evil = client_hello("evil.example")
    upstream = Upstream()
    async with trio.open_nursery() as nursery:
        port = await start_proxy(nursery, await upstream.start(nursery), server_first_wait=0.05, client_first_wait=2.0)
        async with await trio.open_tcp_stream("127.0.0.1", port) as client:
            await client.send_all(evil[:10])
            await trio.sleep(0.2)
            await client.send_all(evil[10:])
            await expect_reset(client)
        (line,) = await logged(log_events)
        nursery.cancel_scope.cancel()
    assert (line["kind"], line["why"]) == ("tls", "TLS SNI evil.example is not allowed")
    assert upstream.connections == 0


async def test_a_stranger_is_reset(log_events: list[dict[str, Any]]) -> None:
    upstream = Upstream()
    async with trio.open_nursery() as nursery:
        proxy = EgressProxy(
            "127.0.0.1",
            0,
            lambda source: None,
            lambda sandbox, address: ["allowed.example"],
            decide=loopback_as_public,
            original_destination=lambda sock: ("127.0.0.1", upstream.port),
        )
        await upstream.start(nursery)
        port = await nursery.start(proxy.run)
        async with await trio.open_tcp_stream("127.0.0.1", port) as client:
            await expect_reset(client)  # at once: nothing is waited for
        (line,) = await logged(log_events)
        nursery.cancel_scope.cancel()
    assert upstream.connections == 0
    assert (line["sandbox"], line["decision"], line["why"]) == (None, "refused", "not a sandbox of this appliance")


async def test_an_upstream_that_refuses_resets_the_client(log_events: list[dict[str, Any]]) -> None:
    with trio.socket.socket() as closed:
        await closed.bind(("127.0.0.1", 0))
        dead_port = closed.getsockname()[1]
    async with trio.open_nursery() as nursery:
        port = await start_proxy(nursery, dead_port)
        async with await trio.open_tcp_stream("127.0.0.1", port) as client:
            await client.send_all(b"GET / HTTP/1.1\r\nHost: allowed.example\r\n\r\n")
            await expect_reset(client)
        (line,) = await logged(log_events)
        nursery.cancel_scope.cancel()
    assert line["decision"] == "allowed" and line["error"].startswith("connect:")


async def test_an_upstream_that_never_answers_resets_the_client_after_the_timeout(
    log_events: list[dict[str, Any]],
) -> None:
    async def never(host: str, port: int) -> trio.SocketStream:
        await trio.sleep_forever()
        raise AssertionError

    async with trio.open_nursery() as nursery:
        port = await start_proxy(nursery, 9, connect=never, connect_timeout=0.1)
        async with await trio.open_tcp_stream("127.0.0.1", port) as client:
            await client.send_all(b"GET / HTTP/1.1\r\nHost: allowed.example\r\n\r\n")
            await expect_reset(client)
        (line,) = await logged(log_events)
        nursery.cancel_scope.cancel()
    assert line["error"] == "connect: no answer within 0.1 s"


async def test_connections_past_the_cap_per_source_are_reset(log_events: list[dict[str, Any]]) -> None:
    upstream = Upstream(banner=b"hello\r\n")
    async with trio.open_nursery() as nursery:
        port = await start_proxy(nursery, await upstream.start(nursery), max_per_source=1, server_first_wait=0.01)
        async with await trio.open_tcp_stream("127.0.0.1", port) as first:
            with trio.fail_after(1):
                assert await first.receive_some() == b"hello\r\n"
            async with await trio.open_tcp_stream("127.0.0.1", port) as second:
                await expect_reset(second)
            (over,) = await logged(log_events)
        await logged(log_events, 2)
        # The first one's end gave its place back.
        async with await trio.open_tcp_stream("127.0.0.1", port) as third:
            with trio.fail_after(1):
                assert await third.receive_some() == b"hello\r\n"
        nursery.cancel_scope.cancel()
    assert (over["decision"], over["why"]) == ("refused", "too many connections")


async def test_an_error_in_one_connection_is_logged_and_the_server_goes_on(log_events: list[dict[str, Any]]) -> None:
    failures = [RuntimeError("boom")]

    def flaky(
        policy: EgressPolicy, address: Address, names: tuple[str, ...], resolved_for: Iterable[str], *, label: str = ""
    ) -> Verdict:
        if failures:
            raise failures.pop()
        return loopback_as_public(policy, address, names, resolved_for, label=label)

    upstream = Upstream()
    request = b"GET / HTTP/1.1\r\nHost: allowed.example\r\n\r\n"
    async with trio.open_nursery() as nursery:
        port = await start_proxy(nursery, await upstream.start(nursery), decide=flaky)
        async with await trio.open_tcp_stream("127.0.0.1", port) as client:
            await client.send_all(request)
            await expect_reset(client)
        async with await trio.open_tcp_stream("127.0.0.1", port) as client:
            await client.send_all(request)
            await client.send_eof()
            assert await receive_all(client) == request
        failed, served = await logged(log_events, 2)
        nursery.cancel_scope.cancel()
    assert failed["error"] == "RuntimeError: boom"
    assert served["decision"] == "allowed" and served["error"] is None
