"""The gateway's listening side: accept, sniff TLS or plain HTTP, terminate TLS, serve.

One port takes both, because the JS SDK talks plain HTTP to `*.localhost` while
everything else uses TLS: the first byte decides (0x16 opens a TLS handshake
record; an HTTP method starts with a letter). A TLS connection's ClientHello is
read whole and parsed (gateway/tls/clienthello.py) before the handshake, for its
SNI: a request whose Host is not that name is refused with 421 (gateway/tls/names.py).

Caps, per gateway process (the workers of appliance/workers.py each count their own):

- connections in all: at `max_connections` the process stops accepting, so the
  kernel hands new connections to a sibling process that has room, or queues them
  until a connection here ends (nginx stops accepting the same way). Closing them
  instead would steal them from siblings with room.
- connections per client address (IPv4 address or IPv6 /64): beyond
  `max_per_address` a new connection is closed at once, before a byte is read;
  every other client keeps being served.
- exchanges per sandbox: see gateway/proxy.py (503).

A TLS connection whose SNI names a port declared `tcp` or `tls` is not HTTP: the
stream router (gateway/access.py `decide_stream`) says so from the ClientHello,
and the connection becomes a byte stream to the container port, TLS ended here
(tcp) or passed through untouched (tls). PostgreSQL's plaintext request for TLS
is answered first (gateway/preamble.py), so `psql sslmode=require` gets there too.
Such a connection leaves one `gateway.connection` line in the log.

The TLS certificate can be replaced while serving (`use_tls`, on SIGHUP): a
handshake uses the certificate current when it starts, so open connections keep
theirs and new ones get the new one.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from appliance import log
from gateway.access import Refuse, Stream, StreamVerdict, Wake
from gateway.caps import Counts, address_key
from gateway.drain import Drain
from gateway.limits import ConnectionLimits, HttpLimits
from gateway.preamble import PREAMBLE_LENGTH, could_be_preamble, read_preamble
from gateway.proxy import ClientInfo, HttpSession, Router, Waker
from gateway.routing.hosts import InvalidHost, normalise_host
from gateway.streams import PrefixedStream, peer_of, splice
from gateway.tls.clienthello import NEED_MORE_DATA, ClientHello, ClientHelloReader, NotClientHello, looks_like_tls
from gateway.tls.identity import ServerTls
from gateway.traffic import TrafficCounter
from gateway.upstream import Pool, UpstreamUnavailable, open_stream

# SNI (normalised) -> what a TLS connection is before any HTTP (None: HTTP).
StreamRouter = Callable[[str], StreamVerdict]

_SNIFF = 4096
# A process at its cap says so at most this often (seconds), not at every connection.
_FULL_LOG_EVERY = 10.0


@dataclass(frozen=True, kw_only=True)
class GatewayLimits:
    sniff_timeout: float = 10.0
    # The whole ClientHello and the handshake after it.
    handshake_timeout: float = 10.0
    drain_timeout: float = 10.0
    http: HttpLimits = field(default_factory=HttpLimits)
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)


class Gateway:
    def __init__(
        self,
        *,
        router: Router,
        tls: ServerTls,
        pool: Pool,
        limits: GatewayLimits = GatewayLimits(),
        worker: int = 0,
        streams: StreamRouter = lambda _sni: None,
        waker: Waker | None = None,
        traffic: TrafficCounter | None = None,
    ) -> None:
        self.router = router
        self.streams = streams
        # Bytes forwarded per sandbox, for metering (gateway/traffic.py reports them).
        self.traffic = traffic or TrafficCounter()
        # Resumes a sandbox that auto_pause put to sleep (None: such a sandbox gets 409).
        self.waker = waker
        # Which gateway process this is (0: the appliance's own), for the access log.
        self.worker = worker
        self.tls = tls
        self.pool = pool
        self.limits = limits
        self.drain = Drain()
        self._open = 0  # client connections accepted and not yet closed
        self._room: trio.Event | None = None  # set when `_open` drops below the cap
        self._full_logged = -_FULL_LOG_EVERY
        self._per_address: Counts[str] = Counts(limits.connections.max_per_address)
        self._per_sandbox: Counts[str] = Counts(limits.http.max_exchanges_per_sandbox)

    def use_tls(self, tls: ServerTls) -> None:
        """Present `tls` to connections from now on; open ones keep what they were shown."""
        self.tls = tls

    @property
    def open_connections(self) -> int:
        return self._open

    async def handle(self, stream: trio.SocketStream) -> None:
        host, peer = peer_of(stream)
        key = address_key(host)
        try:
            if not self._per_address.take(key):
                log.event(
                    "gateway.connection_refused",
                    peer=peer,
                    reason="too_many_connections_from_address",
                    limit=self._per_address.limit,
                    worker=self.worker,
                )
                await trio.aclose_forcefully(stream)
                return
            try:
                with self.drain.connection():
                    await self._serve_connection(stream, peer)
            finally:
                self._per_address.give_back(key)
        finally:
            self._closed()

    async def _serve_connection(self, stream: trio.SocketStream, peer: str) -> None:
        try:
            await self._handle(stream, peer)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.event("gateway.connection_error", peer=peer, error=str(exc) or type(exc).__name__)
        except Exception as exc:
            # A bug met by one connection must not crash the nursery that holds every
            # other connection and the listeners: log it and drop only this one.
            log.event(
                "gateway.connection_crashed",
                peer=peer,
                error=repr(exc),
                traceback="".join(traceback.format_exception(exc)),
            )
        finally:
            await trio.aclose_forcefully(stream)

    async def _handle(self, stream: trio.SocketStream, peer: str) -> None:
        first = b""
        with trio.move_on_after(self.limits.sniff_timeout), self.drain.idle():
            first = await _first_bytes(stream)
        if not first:
            return
        if not looks_like_tls(first[0]):
            client = ClientInfo(peer=peer, scheme="http")
            await self._serve_http(PrefixedStream(stream, first), client)
            return
        tls = self.tls  # this connection's, whatever a reload does meanwhile
        # One deadline for the whole ClientHello and the handshake after it.
        deadline = trio.current_time() + self.limits.handshake_timeout
        late = f"no complete TLS handshake within {self.limits.handshake_timeout:g} s"
        got: tuple[ClientHello, bytes] | str = late
        with trio.move_on_at(deadline):
            got = await _read_client_hello(stream, first)
        if isinstance(got, str):
            log.event("gateway.tls_failed", peer=peer, error=got, worker=self.worker)
            return
        hello, received = got
        sni = _sni(hello)
        stream_verdict = self.streams(sni) if sni is not None else None
        if isinstance(stream_verdict, Wake):
            stream_verdict = await self._woken(stream_verdict, lambda: self.streams(sni or ""))
            deadline = trio.current_time() + self.limits.handshake_timeout
        if stream_verdict is not None:
            await self._serve_stream(stream, received, stream_verdict, tls, peer, sni or "", deadline)
            return
        ssl_stream: trio.SSLStream[PrefixedStream] | str = late
        with trio.move_on_at(deadline):
            ssl_stream = await _handshake(PrefixedStream(stream, received), tls)
        if isinstance(ssl_stream, str):
            log.event("gateway.tls_failed", peer=peer, error=ssl_stream, worker=self.worker)
            return
        client = ClientInfo(peer=peer, scheme="https", sni=sni, cert_names=tls.names)
        await self._serve_http(ssl_stream, client)

    async def _woken(self, wake: Wake, again: Callable[[], StreamVerdict]) -> Stream | Refuse | None:
        """Resume the sleeping sandbox, then decide again; a failed wake refuses."""
        if self.waker is None:
            return Refuse(409, "sandbox_not_running", f"sandbox {wake.sandbox_id} is paused")
        failure = await self.waker(wake.sandbox_id)
        if failure is not None:
            return Refuse(503, "wake_failed", failure)
        verdict = again()
        if isinstance(verdict, Wake):
            return Refuse(503, "wake_failed", f"sandbox {wake.sandbox_id} is still asleep")
        return verdict

    async def _serve_stream(
        self,
        stream: trio.SocketStream,
        received: bytes,
        verdict: Stream | Refuse,
        tls: ServerTls,
        peer: str,
        sni: str,
        deadline: float,
    ) -> None:
        """A connection for a tcp or tls port: its bytes go to the container port as they are."""
        started = time.monotonic()
        fields: dict[str, object] = {"peer": peer, "host": sni, "worker": self.worker}
        if isinstance(verdict, Refuse):
            # Nothing can be said in a protocol we do not speak: close, and log why.
            log.event("gateway.connection", **fields, outcome=verdict.error, error=verdict.message, ms=0)
            return
        fields |= {"sandbox": verdict.sandbox_id, "port": verdict.port, "mode": "tls" if verdict.passthrough else "tcp"}
        if not self._per_sandbox.take(verdict.sandbox_id):
            log.event("gateway.connection", **fields, outcome="sandbox_busy", ms=0)
            return
        outcome, moved = "ok", (0, 0)
        try:
            client: trio.abc.Stream = PrefixedStream(stream, received)
            if not verdict.passthrough:
                got: trio.abc.Stream | str = "no complete TLS handshake in time"
                with trio.move_on_at(deadline):
                    got = await _handshake(client, tls, https_compatible=False)
                if isinstance(got, str):
                    outcome = "tls_failed"
                    fields["error"] = got
                    return
                client = got
            try:
                upstream = await open_stream(verdict.address, timeout=self.pool.connect_timeout)
            except UpstreamUnavailable as exc:
                outcome = "upstream_unavailable"
                fields["error"] = f"nothing is listening on port {verdict.port} in sandbox {verdict.sandbox_id}: {exc}"
                return
            try:
                moved = await splice(client, upstream, idle_timeout=self.limits.http.tunnel_idle_timeout)
            finally:
                await trio.aclose_forcefully(upstream)
        finally:
            if isinstance(client, trio.SSLStream):
                # A clean TLS end (close_notify): the client reads the service's close as
                # an end of stream, not as a truncation attack.
                with trio.move_on_after(1), contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await client.aclose()
            self._per_sandbox.give_back(verdict.sandbox_id)
            # Passthrough: the ClientHello is the sandbox's too.
            bytes_in = moved[0] + (len(received) if verdict.passthrough else 0)
            self.traffic.add(verdict.sandbox_id, bytes_in, moved[1])
            log.event(
                "gateway.connection",
                **fields,
                outcome=outcome,
                bytes_in=bytes_in,
                bytes_out=moved[1],
                ms=round((time.monotonic() - started) * 1000, 2),
            )

    async def _serve_http(self, stream: trio.abc.Stream, client: ClientInfo) -> None:
        session = HttpSession(
            stream,
            client=client,
            router=self.router,
            pool=self.pool,
            drain=self.drain,
            limits=self.limits.http,
            exchanges=self._per_sandbox,
            worker=self.worker,
            waker=self.waker,
            traffic=self.traffic,
        )
        await session.run()

    async def serve(
        self,
        listeners: list[trio.SocketListener],
        shutdown: trio.Event,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until `shutdown` is set, then drain within the bound and return."""
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as accepting:
                for listener in listeners:
                    accepting.start_soon(self._accept_loop, listener, connections)
                task_status.started()
                await shutdown.wait()
                accepting.cancel_scope.cancel()
            for listener in listeners:
                await listener.aclose()
            self.drain.start()
            with trio.move_on_after(self.limits.drain_timeout) as waited:
                await self.drain.wait_quiet()
            if waited.cancelled_caught:
                log.event("gateway.drain_timeout", open_connections=self.drain.active)
            connections.cancel_scope.cancel()
        await self.pool.close_all()

    async def _accept_loop(self, listener: trio.SocketListener, connections: trio.Nursery) -> None:
        cap = self.limits.connections.max_connections
        while True:
            while self._open >= cap:
                if self._room is None:
                    self._room = trio.Event()
                    now = trio.current_time()
                    if now - self._full_logged >= _FULL_LOG_EVERY:
                        self._full_logged = now
                        log.event("gateway.at_capacity", open_connections=self._open, limit=cap, worker=self.worker)
                await self._room.wait()
            try:
                stream = await listener.accept()
            except OSError as exc:
                # EMFILE and friends: back off rather than spin (as trio's serve_listeners).
                log.event("gateway.accept_error", error=str(exc))
                await trio.sleep(0.1)
                continue
            # Counted here, not in the task: the next accept must see it.
            self._open += 1
            connections.start_soon(self.handle, stream)

    def _closed(self) -> None:
        self._open -= 1
        if self._room is not None and self._open < self.limits.connections.max_connections:
            self._room.set()
            self._room = None


async def _first_bytes(stream: trio.SocketStream) -> bytes:
    """The connection's first bytes, after answering any plaintext request for TLS
    (gateway/preamble.py); b"" when the client closed first."""
    data = bytes(await stream.receive_some(_SNIFF))
    for _ in range(2):  # a GSSENCRequest declined, then an SSLRequest
        while data and len(data) < PREAMBLE_LENGTH and could_be_preamble(data):
            more = await stream.receive_some(_SNIFF)
            if not more:
                return b""
            data += more
        preamble = read_preamble(data)
        if preamble is None:
            return data
        await stream.send_all(preamble.reply)
        data = data[PREAMBLE_LENGTH:] or bytes(await stream.receive_some(_SNIFF))
    return data


async def _read_client_hello(stream: trio.SocketStream, first: bytes) -> tuple[ClientHello, bytes] | str:
    """The client's whole ClientHello and every byte read so far; or why not."""
    reader = ClientHelloReader()
    data = first
    try:
        while (hello := reader.feed(data)) is NEED_MORE_DATA:
            data = await stream.receive_some(_SNIFF)
            if not data:
                return "the client closed before its ClientHello ended"
    except NotClientHello as exc:
        return f"not a TLS ClientHello: {exc.reason}"
    assert isinstance(hello, ClientHello)
    return hello, reader.received


async def _handshake(
    stream: trio.abc.Stream, tls: ServerTls, *, https_compatible: bool = True
) -> trio.SSLStream[PrefixedStream] | str:
    """The server side of the handshake; `stream` replays the ClientHello already read.

    `https_compatible` (HTTP): closes without close_notify, as HTTPS servers do. A tcp
    port's stream is not HTTP: its end is told with close_notify, which clients such
    as psql and openssl expect.
    """
    ssl_stream = trio.SSLStream(stream, tls.context, server_side=True, https_compatible=https_compatible)
    try:
        await ssl_stream.do_handshake()
    except trio.BrokenResourceError as exc:
        return _tls_error(exc)
    return ssl_stream  # type: ignore[return-value]


def _sni(hello: ClientHello) -> str | None:
    if hello.sni is None:
        return None
    try:
        return normalise_host(hello.sni)
    except InvalidHost:
        # Kept as sent: no Host can equal it, so every request on it is misdirected.
        return hello.sni


def _tls_error(exc: BaseException) -> str:
    cause = exc.__cause__
    return str(cause) if cause is not None else (str(exc) or type(exc).__name__)
