"""controlplane.network.resolver: only names the policy allows are looked up, and the
addresses answered are granted before the answer goes back."""

from __future__ import annotations

import socket
from typing import Any

import dns.message
import dns.rcode
import dns.rrset
import trio

from controlplane.egress import EgressPolicy, policy_of
from controlplane.network.resolver import Forward, Refuse, Resolver, answered_addresses, decide

POLICY = policy_of(True, {"allow_out": ["*.allowed.test", "allowed.test"], "deny_out": []})


def query(name: str, rdtype: str = "A") -> bytes:
    return bytes(dns.message.make_query(name, rdtype).to_wire())


def test_decide_refuses_denied_names_and_strangers_and_forwards_the_rest() -> None:
    assert decide(query("www.allowed.test"), POLICY) == Forward("www.allowed.test", "A")
    refused = decide(query("secret.exfil.test", "TXT"), POLICY)
    assert isinstance(refused, Refuse) and refused.why == "denied by the egress policy"
    assert dns.message.from_wire(refused.reply).rcode() == dns.rcode.REFUSED
    stranger = decide(query("www.allowed.test"), None)
    assert isinstance(stranger, Refuse) and "not a sandbox" in stranger.why
    offline = decide(query("www.allowed.test"), EgressPolicy(internet=False))
    assert isinstance(offline, Refuse)
    assert decide(b"\x00garbage", POLICY) is None
    response = dns.message.make_response(dns.message.make_query("a.allowed.test", "A"))
    assert decide(bytes(response.to_wire()), POLICY) is None  # answers are not questions


def answer(name: str, *addresses: str, ttl: int = 30) -> bytes:
    response = dns.message.make_response(dns.message.make_query(name, "A"))
    response.answer.append(dns.rrset.from_text(name, ttl, "IN", "A", *addresses))
    return bytes(response.to_wire())


def test_answered_addresses_and_a_floor_on_how_long_they_are_granted() -> None:
    addresses, seconds = answered_addresses(answer("a.test.", "192.0.2.1", "192.0.2.2", ttl=5))
    assert (sorted(addresses), seconds) == (["192.0.2.1", "192.0.2.2"], 60)
    assert answered_addresses(answer("a.test.", "192.0.2.1", ttl=600)) == (["192.0.2.1"], 600)
    assert answered_addresses(b"junk") == ([], 0)


async def fake_upstream(nursery: trio.Nursery, records: dict[str, str]) -> int:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))

    async def serve() -> None:
        with sock:
            while True:
                wire, peer = await sock.recvfrom(65535)
                q = dns.message.from_wire(wire)
                name = q.question[0].name.to_text()
                r = dns.message.make_response(q)
                if name in records:
                    r.answer.append(dns.rrset.from_text(name, 300, "IN", "A", records[name]))
                else:
                    r.set_rcode(dns.rcode.NXDOMAIN)
                await sock.sendto(r.to_wire(), peer)

    nursery.start_soon(serve)
    return int(sock.getsockname()[1])


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def ask(port: int, wire: bytes) -> dns.message.Message:
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await sock.connect(("127.0.0.1", port))
        await sock.send(wire)
        with trio.fail_after(5):
            return dns.message.from_wire(await sock.recv(65535))


async def test_the_resolver_answers_allowed_names_grants_first_and_refuses_the_rest(
    nursery: trio.Nursery, log_events: list[dict[str, Any]]
) -> None:
    upstream = await fake_upstream(nursery, {"www.allowed.test.": "192.0.2.10"})
    granted: list[tuple[str, str, list[str], int]] = []

    async def allow(sandbox_id: str, name: str, addresses: list[str], seconds: int) -> None:
        granted.append((sandbox_id, name, addresses, seconds))

    port = free_udp_port()
    resolver = Resolver(
        address="127.0.0.1",
        port=port,
        upstream=("127.0.0.1", upstream),
        lookup=lambda source: ("sbx-a", POLICY) if source == "127.0.0.1" else None,
        allow=allow,
    )
    await nursery.start(resolver.run)
    reply = await ask(port, query("www.allowed.test"))
    assert [r.address for r in reply.answer[0]] == ["192.0.2.10"]
    assert granted == [("sbx-a", "www.allowed.test", ["192.0.2.10"], 300)]
    denied = await ask(port, query("data-to-leak.exfil.test"))
    assert denied.rcode() == dns.rcode.REFUSED and len(granted) == 1
    missing = await ask(port, query("nothing.allowed.test"))
    assert missing.rcode() == dns.rcode.NXDOMAIN
    decisions = [(e["query"], e["decision"]) for e in log_events if e["event"] == "egress.dns"]
    assert ("data-to-leak.exfil.test", "refused") in decisions and ("www.allowed.test", "answered") in decisions


async def test_queries_over_tcp_are_answered_too(nursery: trio.Nursery) -> None:
    upstream = await fake_upstream(nursery, {"x.allowed.test.": "192.0.2.11"})

    async def allow(*_: Any) -> None:
        return None

    port = free_udp_port()
    resolver = Resolver(
        address="127.0.0.1", port=port, upstream=("127.0.0.1", upstream),
        lookup=lambda _s: ("sbx-a", POLICY), allow=allow,
    )  # fmt: skip
    await nursery.start(resolver.run)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        wire = query("x.allowed.test")
        await stream.send_all(len(wire).to_bytes(2, "big") + wire)
        data = b""
        with trio.fail_after(5):
            while len(data) < 2 or len(data) < 2 + int.from_bytes(data[:2], "big"):
                data += await stream.receive_some(65535)
    reply = dns.message.from_wire(data[2:])
    assert [r.address for r in reply.answer[0]] == ["192.0.2.11"]
