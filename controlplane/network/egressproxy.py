"""The egress proxy: where a restricted sandbox's outgoing TCP connections are judged by name.

A sandbox whose egress policy restricts anything (controlplane/egress.py) has every
TCP connection it opens to a destination outside the host REDIRECTed by nftables to
this proxy, listening on the bridge's gateway address. For each connection it

    finds the sandbox by its source address          a stranger is reset at once
    reads the original destination (SO_ORIGINAL_DST)
    peeks at the client's first bytes                TLS: the SNI; HTTP: Host, and the
                                                     target of absolute-form and CONNECT
    decides                                          the destination address against the
                                                     policy and the names the appliance's
                                                     resolver handed it out for; every name
                                                     seen must be allowed too
    refuses                                          HTTP: a 403 that says why; anything
                                                     else: a TCP reset, so it fails at once
    or connects and splices                          the peeked bytes go first, untouched

Clients of HTTP and TLS speak first, so on ports 80 and 443 the proxy waits for them
(10 s); on other ports the server may speak first (SSH, SMTP), so after 0.3 s of
silence the connection is decided by its address alone. One `egress.connection` log
line per connection.

    sniff(data)                 pure: what the first bytes say (kind, names)
    decide(policy, address, …)  pure: allowed or not, and why
    original_destination(sock)  the address the sandbox asked for
    EgressProxy                 Trio: the listener, the caps, the log

Known limits. The name is only checked where it is in the clear: the Host inside TLS
cannot be seen, so a client that sends an allowed SNI and another Host inside TLS to
a shared (CDN) address that the allowed name resolved to is not caught; with ECH the
real SNI is hidden too, and the connection is decided by its address. A client that
holds back its first bytes for longer than the server-first wait on a port other than
80 and 443 is likewise decided by address only. In every case the address itself must
be allowed: by a CIDR rule, or as handed out by the sandbox's resolver for an allowed name.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
import struct
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

import trio

from appliance import log
from controlplane.egress import Address, EgressPolicy, Network, normalise_name
from controlplane.network.bridgesocket import bind_on_bridge
from controlplane.network.ruleset import BLOCKED_DESTINATIONS
from gateway.caps import Counts
from gateway.streams import splice
from gateway.tls.clienthello import NeedMoreData, NotClientHello, looks_like_tls, parse_client_hello

# At most this much of a connection is read before deciding: a real ClientHello or
# request head fits easily, and nobody gets to make the proxy buffer more.
SNIFF_LIMIT = 16 * 1024
CLIENT_FIRST_PORTS = frozenset({80, 443})
CLIENT_FIRST_WAIT = 10.0
SERVER_FIRST_WAIT = 0.3
CONNECT_TIMEOUT = 10.0
IDLE_TIMEOUT = 3600.0
MAX_CONNECTIONS = 4096
MAX_PER_SOURCE = 256
# After a 403: how long, and how much, the client's unread bytes are drained before
# closing, so that the close does not turn into a reset that destroys the answer.
_FORBID_LINGER = 1.0
_FORBID_DRAIN = 256 * 1024
_BACKLOG = 512
_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
_SOCKADDR_IN = 16

# The IPv4 ranges the firewall blocks for every sandbox, and their IPv6 kin: the
# unspecified and loopback addresses, link-local, unique local and multicast.
_BLOCKED_V6 = ("::/128", "::1/128", "fe80::/10", "fc00::/7", "ff00::/8")
_BLOCKED: tuple[Network, ...] = tuple(ipaddress.ip_network(net) for net in (*BLOCKED_DESTINATIONS, *_BLOCKED_V6))

Kind = Literal["tls", "http", "other"]
# What a name is called in a refusal, after where it was seen.
_LABELS: dict[str, str] = {"tls": "TLS SNI", "http": "HTTP Host", "other": "name"}


@dataclass(frozen=True)
class Sniffed:
    """What a connection's first bytes say: its protocol, and every name it asks for
    (lowercase, port stripped; an IP literal as it is). All of them must be allowed."""

    kind: Kind
    names: tuple[str, ...] = ()


OTHER = Sniffed("other")


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    why: str


def sniff(data: bytes) -> Sniffed | None:
    """What the first bytes of a connection are, or None when more bytes could tell."""
    if not data:
        return None
    if looks_like_tls(data[0]):
        return _sniff_tls(data)
    return _sniff_http(data)


def _sniff_tls(data: bytes) -> Sniffed | None:
    try:
        hello = parse_client_hello(data[:SNIFF_LIMIT])
    except NotClientHello:
        return OTHER
    if isinstance(hello, NeedMoreData):
        return OTHER if len(data) >= SNIFF_LIMIT else None
    return Sniffed("tls", (hello.sni.lower(),) if hello.sni else ())


_REQUEST_LINE = re.compile(rb"([A-Z]{1,20}) (\S+) HTTP/1\.[01]")
# Every prefix of a request line (as far as it can be told from its start).
_PARTIAL_LINE = re.compile(
    rb"[A-Z]{0,20}|[A-Z]{1,20} \S*|[A-Z]{1,20} \S+ (?:H(?:T(?:T(?:P(?:/(?:1(?:\.[01]?)?)?)?)?)?)?)?\r?"
)
_ABSOLUTE = re.compile(r"[a-z][a-z0-9+.-]*://([^/?#]*)")


def _sniff_http(data: bytes) -> Sniffed | None:
    # RFC 9112 section 2.2: servers ignore empty lines before a request; so must we,
    # or a leading CRLF would hide the Host.
    window = data[:SNIFF_LIMIT].lstrip(b"\r\n")
    more = None if len(data) < SNIFF_LIMIT else OTHER
    # Bare LF line ends too: servers accept them, so a Host behind them counts.
    lines = window.split(b"\n")
    if len(lines) == 1:
        return more if _PARTIAL_LINE.fullmatch(lines[0]) else OTHER
    request = _REQUEST_LINE.fullmatch(lines[0].removesuffix(b"\r"))
    if request is None:
        return OTHER
    headers: list[bytes] = []
    # The last piece follows the last LF: an unfinished line.
    for line in lines[1:-1]:
        line = line.removesuffix(b"\r")
        if not line:
            break
        headers.append(line)
    else:
        return more
    method, target = request.group(1), request.group(2).decode("latin-1").lower()
    names: list[str] = []
    if method == b"CONNECT":
        names.append(_host_of(target))
    elif absolute := _ABSOLUTE.match(target):
        names.append(_host_of(absolute.group(1)))
    for header in headers:
        key, colon, value = header.partition(b":")
        if colon and key.strip().lower() == b"host":
            names.append(_host_of(value.decode("latin-1")))
    return Sniffed("http", tuple(dict.fromkeys(name for name in names if name)))


def _host_of(authority: str) -> str:
    """The host of `[user@]host[:port]`, lowercase; an IPv6 literal without its brackets."""
    host = authority.strip().lower().rpartition("@")[2]
    if host.startswith("["):
        inside, bracket, _ = host[1:].partition("]")
        return inside if bracket else host
    name, colon, port = host.rpartition(":")
    if colon and (port.isdigit() or not port):
        return name
    return host


def is_blocked(address: Address) -> bool:
    """Whether no sandbox may ever connect to `address` (private, loopback, link-local, …)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address.version == net.version and address in net for net in _BLOCKED)


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def decide(
    policy: EgressPolicy,
    address: Address,
    names: tuple[str, ...],
    resolved_for: Iterable[str],
    *,
    label: str = "name",
) -> Verdict:
    """Whether a connection to `address` may leave. `names`: what the client asked for
    in its first bytes (`label` says where: "TLS SNI", "HTTP Host"); `resolved_for`: the
    names the appliance's resolver handed `address` out for, to any sandbox, still valid
    (controlplane/network/grants.py says why sharing them grants nothing the policy does not)."""
    resolved = tuple(resolved_for)
    if not policy.internet:
        return Verdict(False, "internet access is off for this sandbox")
    if is_blocked(address):
        return Verdict(False, f"address {address} is in a blocked range")
    if policy.deny.matches_address(address):
        return Verdict(False, f"address {address} is denied")
    if not names:
        # Nothing else to go by: an address handed out for a denied name is that name
        # (the policy changed since, or another name shares the address).
        denied = next((name for name in resolved if policy.deny.matches_name(name)), None)
        if denied is not None:
            return Verdict(False, f"address {address} was resolved for the denied name {denied}")
    for name in names:
        if _is_ip_literal(name):
            continue  # the address decides below
        normal = normalise_name(name)
        if normal is None:
            # A server may well read a malformed name as a denied one ("evil.example..").
            return Verdict(False, f"{label} {name[:100]!a} is not a valid name")
        # A CIDR the allow list names explicitly lets any name through to it (the
        # operator allowed that range, whatever is served there), but a denied name never.
        if policy.deny.matches_name(normal) or not (
            policy.name_allowed(normal) or policy.allow.matches_address(address)
        ):
            return Verdict(False, f"{label} {normal} is not allowed")
    if not policy.address_allowed(address, resolved_for=resolved):
        return Verdict(
            False,
            f"address {address} is not allowed (connect by a name the policy allows, "
            "resolved through the sandbox's DNS)",
        )
    return Verdict(True, "allowed")


def parse_sockaddr_in(raw: bytes) -> tuple[str, int]:
    """(address, port) from a struct sockaddr_in; OSError for anything else."""
    if len(raw) < 8 or struct.unpack_from("=H", raw)[0] != socket.AF_INET:
        raise OSError(f"not an IPv4 socket address ({len(raw)} bytes)")
    return socket.inet_ntoa(raw[4:8]), int.from_bytes(raw[2:4], "big")


def original_destination(sock: trio.socket.SocketType) -> tuple[str, int]:
    """Where the redirected connection was headed (IPv4 only), from conntrack."""
    return parse_sockaddr_in(sock.getsockopt(socket.SOL_IP, _SO_ORIGINAL_DST, _SOCKADDR_IN))


class Decide(Protocol):
    def __call__(
        self,
        policy: EgressPolicy,
        address: Address,
        names: tuple[str, ...],
        resolved_for: Iterable[str],
        *,
        label: str = "name",
    ) -> Verdict: ...


# source address -> (sandbox id, its policy), None for strangers
Lookup = Callable[[str], tuple[str, EgressPolicy] | None]
# (sandbox id, address) -> the names the sandbox's resolver answered with that address
NamesFor = Callable[[str, str], list[str]]
OriginalDestination = Callable[[trio.socket.SocketType], tuple[str, int]]
Connect = Callable[[str, int], Awaitable[trio.abc.Stream]]


@dataclass
class _Record:
    """One connection's log line, filled in as the connection goes."""

    source: str
    sandbox: str | None = None
    destination: str = ""
    names: tuple[str, ...] = ()
    kind: str = "other"
    decision: str = "refused"
    why: str = ""
    error: str | None = None
    bytes_out: int = 0
    bytes_in: int = 0


async def _reset(stream: trio.SocketStream) -> None:
    """Close with a TCP reset: the client fails at once instead of reading an end it may take for success."""
    with contextlib.suppress(OSError):
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await trio.aclose_forcefully(stream)


async def _forbid(stream: trio.SocketStream, why: str) -> None:
    body = f"scalebox egress: {why}\n".encode()
    head = (
        "HTTP/1.1 403 Forbidden\r\nConnection: close\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with trio.move_on_after(_FORBID_LINGER), contextlib.suppress(trio.BrokenResourceError, OSError):
        await stream.send_all(head + body)
        await stream.send_eof()
        drained = 0
        while drained < _FORBID_DRAIN and (data := await stream.receive_some(64 * 1024)):
            drained += len(data)
    await trio.aclose_forcefully(stream)


def _peer(stream: trio.SocketStream) -> str:
    try:
        return str(stream.socket.getpeername()[0])
    except OSError:
        return "?"


class EgressProxy:
    def __init__(
        self,
        address: str,
        port: int,
        lookup: Lookup,
        names_for: NamesFor,
        decide: Decide = decide,
        original_destination: OriginalDestination = original_destination,
        connect: Connect = trio.open_tcp_stream,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        client_first_wait: float = CLIENT_FIRST_WAIT,
        server_first_wait: float = SERVER_FIRST_WAIT,
        client_first_ports: frozenset[int] = CLIENT_FIRST_PORTS,
        max_connections: int = MAX_CONNECTIONS,
        max_per_source: int = MAX_PER_SOURCE,
    ) -> None:
        self.address = address
        self.port = port
        self.lookup = lookup
        self.names_for = names_for
        self.decide = decide
        self.original_destination = original_destination
        self.connect = connect
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.client_first_wait = client_first_wait
        self.server_first_wait = server_first_wait
        self.client_first_ports = client_first_ports
        self.max_connections = max_connections
        self._open = 0
        self._per_source: Counts[str] = Counts(max_per_source)

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled; `started` with the port bound (for port 0)."""
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with sock:
            await bind_on_bridge(sock, self.address, self.port)
            sock.listen(_BACKLOG)
            port: int = sock.getsockname()[1]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.serve_listeners, self._handle, [trio.SocketListener(sock)])
                task_status.started(port)

    async def _handle(self, client: trio.SocketStream) -> None:
        started = trio.current_time()
        record = _Record(source=_peer(client))
        if self._open >= self.max_connections or not self._per_source.take(record.source):
            record.why = "too many connections"
            await _reset(client)
            self._log(record, started)
            return
        self._open += 1
        try:
            await self._serve(client, record)
        except Exception as exc:  # a client's (or upstream's) misbehaviour must never end the server
            record.error = f"{type(exc).__name__}: {exc}"
            await _reset(client)
        finally:
            self._open -= 1
            self._per_source.give_back(record.source)
            await trio.aclose_forcefully(client)
            self._log(record, started)

    async def _serve(self, client: trio.SocketStream, record: _Record) -> None:
        found = self.lookup(record.source)
        if found is None:
            record.why = "not a sandbox of this appliance"
            await _reset(client)
            return
        record.sandbox, policy = found
        host, port = self.original_destination(client.socket)
        record.destination = f"{host}:{port}"
        first, sniffed = await self._first_bytes(client, port)
        record.kind, record.names = sniffed.kind, sniffed.names
        verdict = self.decide(
            policy,
            ipaddress.ip_address(host),
            sniffed.names,
            self.names_for(record.sandbox, host),
            label=_LABELS[sniffed.kind],
        )
        record.why = verdict.why
        if not verdict.allowed:
            if sniffed.kind == "http":
                await _forbid(client, verdict.why)
            else:
                await _reset(client)
            return
        record.decision = "allowed"
        upstream = await self._connect(host, port, record)
        if upstream is None:
            await _reset(client)
            return
        try:
            if first:
                await upstream.send_all(first)
                record.bytes_out = len(first)
            out, back = await splice(client, upstream, idle_timeout=self.idle_timeout)
            record.bytes_out += out
            record.bytes_in = back
        finally:
            await trio.aclose_forcefully(upstream)

    async def _first_bytes(self, client: trio.SocketStream, port: int) -> tuple[bytes, Sniffed]:
        """The client's first bytes and what they say; b"" when it said nothing in time."""
        start = trio.current_time()
        wait = self.client_first_wait if port in self.client_first_ports else self.server_first_wait
        data = b""
        with trio.CancelScope(deadline=start + wait) as scope:
            while len(data) < SNIFF_LIMIT:
                chunk = await client.receive_some(SNIFF_LIMIT - len(data))
                if not chunk:
                    break
                data += chunk
                sniffed = sniff(data)
                if sniffed is not None:
                    return data, sniffed
                # It speaks first after all: give the rest of its hello the time a client gets.
                scope.deadline = max(scope.deadline, start + self.client_first_wait)
        return data, sniff(data) or OTHER

    async def _connect(self, host: str, port: int, record: _Record) -> trio.abc.Stream | None:
        with trio.move_on_after(self.connect_timeout):
            try:
                return await self.connect(host, port)
            except OSError as exc:
                record.error = f"connect: {exc}"
                return None
        record.error = f"connect: no answer within {self.connect_timeout:g} s"
        return None

    def _log(self, record: _Record, started: float) -> None:
        log.event(
            "egress.connection",
            sandbox=record.sandbox,
            source=record.source,
            destination=record.destination,
            names=list(record.names),
            kind=record.kind,
            decision=record.decision,
            why=record.why,
            error=record.error,
            bytes_out=record.bytes_out,
            bytes_in=record.bytes_in,
            ms=round((trio.current_time() - started) * 1000),
        )
