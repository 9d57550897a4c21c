"""The sandboxes' DNS resolver: it answers only the names a sandbox's egress policy allows.

Every sandbox is given this resolver (on the bridge's gateway address) and the
firewall lets no other DNS out, so a name the policy denies cannot be looked up
at all: nothing leaks through queries for `<secret>.attacker.example` when egress
is denied. An allowed query goes to the upstream resolver; the addresses in its
answer are handed to `allow` (the firewall's set of addresses this sandbox may
reach by name) *before* the answer is sent, so the connection that follows finds
its rule in place.

    decide(wire, policy)   pure: refuse now (with the reply), or forward
    Resolver               Trio: UDP and TCP on one address, the upstream, the log

One `egress.dns` log line per query: sandbox, name, type, decision.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import trio

from appliance import log
from controlplane.egress import EgressPolicy, normalise_name
from controlplane.network.bridgesocket import bind_on_bridge

# How long an address handed out stays reachable, at least and at most (seconds):
# clients cache answers beyond their TTL, and a TTL of 0 must not make a rule vanish
# before the connection it was looked up for is made.
MIN_GRANT = 60
MAX_GRANT = 24 * 3600
UPSTREAM_TIMEOUT = 3.0
MAX_IN_FLIGHT = 256


@dataclass(frozen=True)
class Refuse:
    reply: bytes
    name: str
    qtype: str
    why: str


@dataclass(frozen=True)
class Forward:
    name: str
    qtype: str


def _reply(query: dns.message.Message, rcode: dns.rcode.Rcode) -> bytes:
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    return bytes(response.to_wire())


def decide(wire: bytes, policy: EgressPolicy | None) -> Refuse | Forward | None:
    """What to do with one query (None: not a query worth an answer)."""
    try:
        query = dns.message.from_wire(wire)
    except dns.exception.DNSException:
        return None
    if query.flags & dns.flags.QR:
        return None  # a response, not a query
    if len(query.question) != 1:
        return Refuse(_reply(query, dns.rcode.FORMERR), "", "", "not exactly one question")
    question = query.question[0]
    qtype = dns.rdatatype.to_text(question.rdtype)
    name = normalise_name(question.name.to_text(omit_final_dot=True)) or ""
    if policy is None:
        return Refuse(_reply(query, dns.rcode.REFUSED), name, qtype, "not a sandbox of this appliance")
    if not name or not policy.name_allowed(name):
        return Refuse(_reply(query, dns.rcode.REFUSED), name, qtype, "denied by the egress policy")
    return Forward(name, qtype)


def answered_addresses(wire: bytes) -> tuple[list[str], int]:
    """The A and AAAA addresses in an upstream answer, and the lowest TTL among them."""
    try:
        response = dns.message.from_wire(wire)
    except dns.exception.DNSException:
        return [], 0
    addresses: list[str] = []
    ttl = MAX_GRANT
    for rrset in response.answer:
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            addresses += [rdata.address for rdata in rrset]
            ttl = min(ttl, rrset.ttl)
    return addresses, max(MIN_GRANT, min(ttl, MAX_GRANT))


# source address -> (sandbox id, its policy), None for strangers
Lookup = Callable[[str], tuple[str, EgressPolicy] | None]
# (sandbox id, name, addresses, seconds) -> done once the firewall lets them through
Allow = Callable[[str, str, list[str], int], Awaitable[None]]


class Resolver:
    def __init__(
        self, *, address: str, upstream: tuple[str, int] | None, lookup: Lookup, allow: Allow, port: int = 53
    ) -> None:
        self.address = address
        self.port = port
        self.upstream = upstream
        self.lookup = lookup
        self.allow = allow
        self._in_flight = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        udp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        for sock in (udp, tcp):
            await bind_on_bridge(sock, self.address, self.port)
        tcp.listen(64)
        with udp, tcp:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._serve_udp, udp, nursery)
                nursery.start_soon(trio.serve_listeners, self._serve_tcp, [trio.SocketListener(tcp)])
                task_status.started()

    async def _serve_udp(self, sock: trio.socket.SocketType, nursery: trio.Nursery) -> None:
        while True:
            wire, peer = await sock.recvfrom(65535)
            if self._in_flight >= MAX_IN_FLIGHT:
                continue  # a flood: dropped, as any resolver under load would
            self._in_flight += 1
            nursery.start_soon(self._answer_udp, sock, wire, peer)

    async def _answer_udp(self, sock: trio.socket.SocketType, wire: bytes, peer: tuple[str, int]) -> None:
        try:
            reply = await self.answer(wire, peer[0])
            if reply is not None:
                await sock.sendto(reply, peer)
        except OSError:
            pass
        finally:
            self._in_flight -= 1

    async def _serve_tcp(self, stream: trio.SocketStream) -> None:
        peer = stream.socket.getpeername()[0]
        buffer = b""
        with trio.move_on_after(30):
            async with stream:
                while True:
                    while len(buffer) < 2 or len(buffer) < 2 + int.from_bytes(buffer[:2], "big"):
                        data = await stream.receive_some(65535)
                        if not data:
                            return
                        buffer += data
                    size = int.from_bytes(buffer[:2], "big")
                    wire, buffer = buffer[2 : 2 + size], buffer[2 + size :]
                    reply = await self.answer(wire, peer)
                    if reply is None:
                        return
                    await stream.send_all(len(reply).to_bytes(2, "big") + reply)

    async def answer(self, wire: bytes, source: str) -> bytes | None:
        """The reply to one query from `source`, or None to stay silent."""
        found = self.lookup(source)
        sandbox_id, policy = found if found is not None else (None, None)
        decision = decide(wire, policy)
        if decision is None:
            return None
        if isinstance(decision, Refuse):
            log.event(
                "egress.dns", sandbox=sandbox_id, source=source, query=decision.name, type=decision.qtype,
                decision="refused", why=decision.why,
            )  # fmt: skip
            return decision.reply
        reply = await self._ask_upstream(wire)
        if reply is None:
            log.event(
                "egress.dns", sandbox=sandbox_id, query=decision.name, type=decision.qtype, decision="upstream_failed"
            )
            return _reply(dns.message.from_wire(wire), dns.rcode.SERVFAIL)
        addresses, ttl = answered_addresses(reply)
        assert sandbox_id is not None
        if addresses:
            await self.allow(sandbox_id, decision.name, addresses, ttl)
        log.event(
            "egress.dns", sandbox=sandbox_id, query=decision.name, type=decision.qtype, decision="answered",
            addresses=addresses,
        )  # fmt: skip
        return reply

    async def _ask_upstream(self, wire: bytes) -> bytes | None:
        """UDP first, whichever way the sandbox asked; TCP when the answer did not fit."""
        if self.upstream is None:
            return None
        with trio.move_on_after(UPSTREAM_TIMEOUT):
            try:
                reply = await self._udp_upstream(wire)
                truncated = reply is not None and dns.message.from_wire(reply).flags & dns.flags.TC
                if not truncated:
                    return reply
                return await self._tcp_upstream(wire)
            except (OSError, dns.exception.DNSException, trio.BrokenResourceError):
                return None
        return None

    async def _udp_upstream(self, wire: bytes) -> bytes | None:
        assert self.upstream is not None
        query_id = wire[:2]
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            await sock.connect(self.upstream)
            await sock.send(wire)
            while True:
                reply = await sock.recv(65535)
                if reply[:2] == query_id:  # anything else is stray
                    return bytes(reply)

    async def _tcp_upstream(self, wire: bytes) -> bytes | None:
        assert self.upstream is not None
        stream = await trio.open_tcp_stream(*self.upstream)
        async with stream:
            await stream.send_all(len(wire).to_bytes(2, "big") + wire)
            buffer = b""
            while len(buffer) < 2 or len(buffer) < 2 + int.from_bytes(buffer[:2], "big"):
                data = await stream.receive_some(65535)
                if not data:
                    return None
                buffer += data
            return buffer[2 : 2 + int.from_bytes(buffer[:2], "big")]


def upstream_from_resolv_conf(path: str = "/etc/resolv.conf") -> tuple[str, int] | None:
    """The host's first IPv4 nameserver (what the appliance itself resolves with)."""
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver" and ":" not in parts[1]:
                    return parts[1], 53
    except OSError:
        return None
    return None
