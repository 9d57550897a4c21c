"""HTTP/1.1 reverse proxying for one client connection, built on h11 on both sides.

One loop per client connection: read a request head, ask the router for a verdict,
then either answer an error ourselves or run one exchange with an upstream taken
from the keep-alive pool. Bodies stream in both directions at once (never buffered
whole), and a `101 Switching Protocols` from upstream turns the two connections into
a raw byte tunnel (WebSocket). Every read has a deadline from `HttpLimits`
(gateway/limits.py); what a head may hold is checked in gateway/requesthead.py.

A refused request is answered by the gateway itself, in the usual error shape:

    head the gateway cannot parse or frame     400/414/431/501, then close
    Host not the TLS connection's SNI          421 (see gateway/tls/names.py)
    too many exchanges open to one sandbox     503
    body stalled, or too slow overall          408, then close
    bad chunked framing in the body            400, then close

(after the upstream's response has begun, a failing client is just disconnected).
Each request leaves one `gateway.request` line in the log.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus

import h11
import trio

from appliance import log
from gateway import errors
from gateway.access import Forward, Refuse, Verdict, Wake, grant_refusal
from gateway.caps import Counts
from gateway.credentials import Credential, find_credential, set_cookie, without_cookie, without_query_token
from gateway.drain import Drain
from gateway.limits import HttpLimits, body_wait
from gateway.requesthead import RequestHead, read_head
from gateway.routing.hosts import InvalidHost, normalise_host
from gateway.streams import CHUNK, PrefixedStream, splice
from gateway.tls.names import misdirected
from gateway.traffic import TrafficCounter
from gateway.upstream import Pool, UpstreamConnection, UpstreamUnavailable

__all__ = ["ClientInfo", "HttpLimits", "HttpSession", "Router", "Waker", "bypasses_token"]

# Headers that describe one hop, not the message (RFC 9110 section 7.6.1). Framing
# headers (Content-Length, Transfer-Encoding) are kept: h11 re-frames from them.
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade", b"proxy-authenticate"}
)
# What a client says about where a request came from is dropped: the gateway says it
# (X-Forwarded-For, -Proto, -Host), so an upstream can trust what it reads there.
# Any other x-forwarded-* goes too.
_CLIENT_CLAIMS = frozenset({b"forwarded", b"x-real-ip", b"x-request-id"})
_MAX_DISCARD = 64 * 1024
# A client's X-Request-Id is passed on only if it is a valid header value after
# truncation; anything else (inner spaces, control bytes) gets a fresh id instead.
_CLIENT_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,64}")


@dataclass(frozen=True, kw_only=True)
class ClientInfo:
    peer: str
    scheme: str
    # TLS only: the SNI name, normalised (None when the client sent none), and the
    # names the certificate shown to this connection covers.
    sni: str | None = None
    cert_names: tuple[str, ...] = ()

    @property
    def ip(self) -> str:
        return self.peer.rsplit(":", 1)[0].strip("[]")


# host (normalised), the request's token (gateway/credentials.py), whether the agent
# authorises this request itself -> verdict
Router = Callable[[str, str | None, bool], Verdict]
# Resume a sandbox that auto_pause put to sleep; None when it is running, else why not.
Waker = Callable[[str], Awaitable[str | None]]


class _ClientGone(Exception):
    pass


class _ClientFault(Exception):
    """The client broke its request mid-body (bad framing) or sent it too slowly."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


def _collapse(group: BaseExceptionGroup) -> BaseException:
    """The one exception that matters from a nursery of two pumps: ours before others."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for kind in (_ClientFault, _UpstreamFailed, _ClientGone):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return group


class _UpstreamFailed(Exception):
    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


class _UpstreamSilent(_UpstreamFailed):
    """The upstream closed before sending a single byte: a request without a body may be replayed."""


# The Python SDK's polling watcher calls these with no headers at all (urllib3
# drops the pool's defaults when connectrpc passes its own), so no access token
# can be asked of them; the watcher id they name is a 128-bit capability that
# only an authenticated CreateWatcher hands out. The agent makes the same exception.
_CAPABILITY_PROCEDURES = (
    b"/sandboxagent.Filesystem/GetWatcherEvents",
    b"/sandboxagent.Filesystem/RemoveWatcher",
)


def bypasses_token(method: bytes, target: bytes) -> bool:
    """Requests the agent authorises itself: signed file URLs and watcher capabilities."""
    path, _, query = target.partition(b"?")
    if method == b"POST" and path in _CAPABILITY_PROCEDURES:
        return True
    if not any(part.startswith(b"signature=") for part in query.split(b"&")):
        return False
    if method in (b"GET", b"HEAD"):
        return path.startswith(b"/download/")
    return method in (b"POST", b"PUT") and path == b"/upload"


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for k, v in headers:
        if k == name:
            return v
    return None


def _connection_tokens(headers: list[tuple[bytes, bytes]]) -> set[bytes]:
    tokens: set[bytes] = set()
    for k, v in headers:
        if k == b"connection":
            tokens |= {t.strip().lower() for t in v.split(b",")}
    return tokens


def _strip_hop_by_hop(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    listed = _connection_tokens(headers)
    return [(k, v) for k, v in headers if k not in _HOP_BY_HOP and k not in listed]


async def _read_event(conn: h11.Connection, stream: trio.abc.Stream, timeout: float) -> object:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        with trio.fail_after(timeout):
            data = await stream.receive_some(CHUNK)
        conn.receive_data(bytes(data))


async def _send(conn: h11.Connection, stream: trio.abc.Stream, event: h11.Event) -> None:
    data = conn.send(event)
    if data:
        await stream.send_all(data)


WATCH_CLIENT_AFTER = 0.5  # seconds into a response before a departed client is looked for
LINGER_TIME = 2.0  # seconds, and bytes, read and dropped after an error answer before closing
LINGER_BYTES = 256 * 1024


class HttpSession:
    """Serves every request arriving on one client connection."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        client: ClientInfo,
        router: Router,
        pool: Pool,
        drain: Drain,
        limits: HttpLimits,
        exchanges: Counts[str],
        worker: int = 0,
        waker: Waker | None = None,
        traffic: TrafficCounter | None = None,
    ) -> None:
        self.stream = stream
        self.waker = waker
        # Bytes of each request forwarded to a sandbox are added here, for metering.
        self.traffic = traffic
        self.client = client
        self.router = router
        self.pool = pool
        self.drain = drain
        self.limits = limits
        # Exchanges in flight per sandbox id, shared by every session of this process.
        self.exchanges = exchanges
        self.worker = worker
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head)
        self._peer_ip = client.ip.encode()
        # Of the request being answered: errors to Connect RPCs take Connect's shape.
        self._connect_kind: str | None = None
        self._content_type = ""
        # Of the request being answered, for its log line and the body's time budget.
        self._head_length = 0
        self._body_received = 0
        self._body_waited = 0.0
        self._bytes_out = 0
        self._tunnelled_in = 0
        # An error answer is followed by a close while the client may still be sending.
        self._linger = False
        # Whether the request being relayed went up whole before its answer began (_relay).
        self._body_forwarded = False
        self._answered = False
        # Of the request being answered: the token it carried, and how.
        self._credential: Credential | None = None

    async def run(self) -> None:
        await self._serve_requests()
        if self._linger:
            await self._linger_close()

    async def _serve_requests(self) -> None:
        first = True
        while True:
            request = await self._next_request(first)
            if request is None:
                return
            first = False
            if not await self._exchange(*request):
                return
            if self.conn.our_state is h11.MUST_CLOSE or self.conn.their_state is h11.MUST_CLOSE:
                return
            try:
                self.conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _next_request(self, first: bool) -> tuple[h11.Request, bytes] | None:
        """The next request, with the raw bytes it arrived in (its head first: see `_head_length`)."""
        conn = self.conn
        # A pipelining client may have sent the next head already: it is in h11's buffer.
        buffered = conn.trailing_data[0]
        chunks = [buffered] if buffered else []
        try:
            event: object = conn.next_event()
            if event is h11.NEED_DATA:
                # Idle between requests: shutdown may close us here.
                data = b""
                with (
                    self.drain.idle(),
                    trio.move_on_after(self.limits.head_timeout if first else self.limits.keepalive_timeout),
                ):
                    data = bytes(await self.stream.receive_some(CHUNK))
                if not data:
                    return None
                # The deadline covers the whole head, not each read: a client that trickles
                # a byte at a time must not hold the connection for ever.
                with trio.fail_after(self.limits.head_timeout):
                    while True:
                        chunks.append(data)
                        conn.receive_data(data)
                        event = conn.next_event()
                        if event is not h11.NEED_DATA:
                            break
                        data = bytes(await self.stream.receive_some(CHUNK))
        except h11.RemoteProtocolError as exc:
            await self._head_error(exc, b"".join(chunks))
            return None
        except trio.TooSlowError:
            received = sum(len(c) for c in chunks)
            log.event("gateway.head_timeout", peer=self.client.peer, received=received, limit=self.limits.head_timeout)
            return None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return None
        if not isinstance(event, h11.Request):
            return None
        raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._head_length = len(raw) - len(conn.trailing_data[0])
        return event, raw

    async def _head_error(self, exc: h11.RemoteProtocolError, received: bytes) -> None:
        status, error = exc.error_status_hint, "bad_request"
        message = f"malformed HTTP request: {exc}"
        if status == 431:
            # h11's buffer outgrew max_head before the head was complete.
            if b"\n" not in received:
                status, error = 414, "uri_too_long"
                message = f"request line longer than {self.limits.max_head} bytes"
            else:
                error, message = "headers_too_large", f"request head longer than {self.limits.max_head} bytes"
        elif status == 501:
            error = "not_implemented"
        await self._raw_error(status, error, message)

    async def _raw_error(self, status: int, error: str, message: str) -> None:
        """An error for a request h11 could not parse: write it by hand, then close."""
        rid = uuid.uuid4().hex[:16]
        ctype, body = errors.render(status, error, message, accept="", request_id=rid)
        head = (
            f"HTTP/1.1 {status} {_reason(status).decode()}\r\ncontent-type: {ctype}\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\nx-request-id: {rid}\r\n\r\n"
        ).encode()
        log.event("gateway.bad_request", request_id=rid, peer=self.client.peer, status=status, error=message)
        self._linger = True
        try:
            with trio.move_on_after(5):
                await self.stream.send_all(head + body)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async def _linger_close(self) -> None:
        """Before closing after an error answer: stop sending, and read and drop what the
        client still sends, for a short while.

        Closing a socket with unread input resets the connection, and the reset can
        destroy the answer before the client has read it: a client still sending its
        body, the usual case here, would see "connection reset" instead of a 400 or a
        408. nginx's lingering close does the same.
        """
        read = 0
        with self.drain.idle(), trio.move_on_after(LINGER_TIME):
            try:
                if isinstance(self.stream, PrefixedStream | trio.abc.HalfCloseableStream):
                    await self.stream.send_eof()  # plain TCP: the client sees the end of the answer
                while read < LINGER_BYTES and (data := await self.stream.receive_some(CHUNK)):
                    read += len(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    # -- one exchange ------------------------------------------------------------------

    def _verdict(self, head: RequestHead, req: h11.Request) -> tuple[str, Verdict]:
        """(host for the log, verdict) of a request whose head passed its checks."""
        self._credential = find_credential(req.target, head.access_token, head.cookies)
        try:
            host = normalise_host(head.host)
        except InvalidHost as exc:
            return head.host.decode("latin-1"), Refuse(400, "bad_host", f"invalid Host header: {exc}")
        if self.client.scheme == "https" and host != self.client.sni:
            why = misdirected(host, self.client.sni, self.client.cert_names)
            if why is not None:
                return host, Refuse(421, "misdirected_request", why)
        token = self._credential.token.decode("latin-1") if self._credential is not None else None
        verdict = self.router(host, token, bypasses_token(req.method, req.target))
        if isinstance(verdict, Forward) and verdict.private:
            path = req.target.split(b"?", 1)[0].decode("latin-1")
            refused = grant_refusal(verdict.grant, req.method.decode("latin-1"), path, time.time())
            if refused is not None:
                return host, refused
        return host, verdict

    async def _wake(self, wake: Wake, head: RequestHead, req: h11.Request) -> tuple[str, Verdict]:
        """Resume a sandbox auto_pause put to sleep, then decide again: the request that
        woke it is the first it answers."""
        if self.waker is None:
            return "", Refuse(409, "sandbox_not_running", f"sandbox {wake.sandbox_id} is paused")
        failure = await self.waker(wake.sandbox_id)
        if failure is not None:
            return "", Refuse(503, "wake_failed", failure)
        host, verdict = self._verdict(head, req)
        if isinstance(verdict, Wake):
            return host, Refuse(503, "wake_failed", f"sandbox {wake.sandbox_id} is still asleep; retry shortly")
        return host, verdict

    async def _exchange(self, req: h11.Request, raw: bytes) -> bool:
        """Handle one request; return whether the client connection may carry another."""
        started = time.monotonic()
        head = read_head(req, raw, self._head_length, self.limits)
        rid_raw = head.request_id[:64]
        rid = rid_raw.decode("ascii") if _CLIENT_REQUEST_ID.fullmatch(rid_raw) else uuid.uuid4().hex[:16]
        accept = head.accept.decode("latin-1")
        self._content_type = head.content_type.decode("latin-1")
        self._connect_kind = errors.connect_kind(req.method, req.target.split(b"?", 1)[0], head.content_type)
        self._body_received, self._body_waited, self._bytes_out, self._tunnelled_in = 0, 0.0, 0, 0
        verdict: Verdict
        self._credential = None
        if head.refusal is not None:
            host, verdict = head.host.decode("latin-1"), head.refusal
        else:
            host, verdict = self._verdict(head, req)
            if isinstance(verdict, Wake):
                woken_host, verdict = await self._wake(verdict, head, req)
                host = woken_host or host

        status, outcome = 0, "ok"
        sandbox: str | None = None
        port: int | None = None
        counted = False
        try:
            if isinstance(verdict, Forward) and verdict.sandbox_id is not None:
                sandbox, port = verdict.sandbox_id, verdict.port
                counted = self.exchanges.take(sandbox)
                if not counted:
                    verdict = Refuse(
                        503,
                        "sandbox_busy",
                        f"sandbox {sandbox} already has {self.exchanges.limit} requests in flight through this "
                        "gateway process; retry shortly",
                    )
            if isinstance(verdict, Refuse):
                status, outcome = verdict.status, verdict.error
                close = head.refusal is not None
                return await self._refuse(verdict.status, verdict.error, verdict.message, accept, rid, close=close)
            assert isinstance(verdict, Forward)
            if self._takes_cookie(verdict, req, head):
                status, outcome = 303, "token_to_cookie"
                return await self._token_to_cookie(req, verdict, rid)
            try:
                status, keep = await self._forward(req, head, verdict, rid)
                return keep
            except _ClientFault as exc:
                status, outcome = exc.status, exc.error
                if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await self._refuse(exc.status, exc.error, exc.message, accept, rid, close=True)
                return False
            except _UpstreamFailed as exc:
                status, outcome = exc.status, exc.error
                if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    return await self._refuse(exc.status, exc.error, exc.message, accept, rid)
                return False
            except _ClientGone:
                outcome = "client_gone"
                return False
        finally:
            if counted:
                assert sandbox is not None
                self.exchanges.give_back(sandbox)
            bytes_in = self._head_length + self._body_received + self._tunnelled_in
            if sandbox is not None and self.traffic is not None:
                self.traffic.add(sandbox, bytes_in, self._bytes_out)
            log.event(
                "gateway.request",
                request_id=rid,
                peer=self.client.peer,
                scheme=self.client.scheme,
                method=req.method.decode("latin-1"),
                host=host,
                path=req.target.split(b"?", 1)[0].decode("latin-1", "replace")[:200],
                sandbox=sandbox,
                port=port,
                status=status,
                outcome=outcome,
                # Bytes read from the client (head, body, and a tunnel's traffic) and written to it.
                bytes_in=bytes_in,
                bytes_out=self._bytes_out,
                worker=self.worker,
                ms=round((time.monotonic() - started) * 1000, 2),
            )

    async def _refuse(
        self, status: int, error: str, message: str, accept: str, rid: str, *, close: bool = False
    ) -> bool:
        """Answer the request ourselves; `close` after it (otherwise the connection is
        kept when the rest of a small body could be read and dropped)."""
        keep = not close and await self._discard_body()
        if self._connect_kind is not None:
            status, ctype, body = errors.render_connect(
                status, message, kind=self._connect_kind, content_type=self._content_type
            )
        else:
            ctype, body = errors.render(status, error, message, accept=accept, request_id=rid)
        headers = [
            (b"content-type", ctype.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", rid.encode()),
        ]
        if not keep or self.drain.draining:
            headers.append((b"connection", b"close"))
            self._linger = not keep
        try:
            response = h11.Response(status_code=status, headers=headers, reason=_reason(status))
            data = b"".join(
                self.conn.send(event) or b"" for event in (response, h11.Data(data=body), h11.EndOfMessage())
            )
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, h11.LocalProtocolError):
            return False
        self._bytes_out += len(data)
        return keep and not self.drain.draining

    def _takes_cookie(self, fwd: Forward, req: h11.Request, head: RequestHead) -> bool:
        """A page opened with ?token= on a private port: answered with a redirect that
        swaps the token in the address for a cookie (gateway/credentials.py)."""
        return (
            fwd.private
            and self._credential is not None
            and self._credential.source == "query"
            and req.method in (b"GET", b"HEAD")
            and not head.is_upgrade
        )

    async def _token_to_cookie(self, req: h11.Request, fwd: Forward, rid: str) -> bool:
        assert self._credential is not None
        expires = fwd.grant.expires_at if fwd.grant is not None else None
        max_age = int(expires - time.time()) if expires is not None else None
        cookie = set_cookie(self._credential.token, secure=self.client.scheme == "https", max_age=max_age)
        headers = [
            (b"location", without_query_token(req.target)),
            (b"set-cookie", cookie),
            (b"cache-control", b"no-store"),
            (b"content-length", b"0"),
            (b"x-request-id", rid.encode()),
        ]
        keep = await self._discard_body()
        if not keep or self.drain.draining:
            headers.append((b"connection", b"close"))
        try:
            # 303: the browser follows with a GET, whatever it sent.
            data = b"".join(
                self.conn.send(event) or b""
                for event in (h11.Response(status_code=303, headers=headers, reason=b"See Other"), h11.EndOfMessage())
            )
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, h11.LocalProtocolError):
            return False
        self._bytes_out += len(data)
        return keep and not self.drain.draining

    async def _discard_body(self) -> bool:
        """Read and drop a small request body so the connection can be reused."""
        seen = 0
        try:
            while self.conn.their_state is h11.SEND_BODY:
                event = await self._read_body_event()
                if isinstance(event, h11.Data):
                    seen += len(event.data)
                    if seen > _MAX_DISCARD:
                        return False
                elif not isinstance(event, h11.EndOfMessage):
                    return False
        except (_ClientFault, _ClientGone):
            return False
        return True

    async def _read_body_event(self) -> object:
        """The client's next body event, within the idle and the whole-body deadlines."""
        conn = self.conn
        try:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                timeout, whole = body_wait(self.limits, self._body_waited, self._body_received)
                began = trio.current_time()
                try:
                    with trio.fail_after(timeout):
                        while event is h11.NEED_DATA:
                            data = await self.stream.receive_some(CHUNK)
                            if not data:
                                raise _ClientGone("client closed mid-body")
                            conn.receive_data(bytes(data))
                            event = conn.next_event()
                finally:
                    self._body_waited += trio.current_time() - began
        except trio.TooSlowError:
            if whole:
                message = (
                    f"request body too slow: {self._body_received} bytes in {self._body_waited:.3g} s "
                    f"(allowed: {self.limits.request_timeout:g} s plus 1 s per {self.limits.body_min_rate:g} bytes)"
                )
            else:
                message = f"request body stalled: nothing for {self.limits.body_idle_timeout:g} s"
            raise _ClientFault(408, "request_timeout", message) from None
        except h11.RemoteProtocolError as exc:
            raise _ClientFault(exc.error_status_hint, "bad_request", f"malformed request body: {exc}") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise _ClientGone(str(exc) or "client connection broke") from None
        if isinstance(event, h11.Data):
            self._body_received += len(event.data)
        return event

    def _upstream_headers(self, head: RequestHead, rid: str, upgrade: bool, private: bool) -> list[tuple[bytes, bytes]]:
        listed = head.connection
        out = [
            (k, v)
            for k, v in head.headers
            if k not in _HOP_BY_HOP
            and k not in _CLIENT_CLAIMS
            and k not in listed
            and not k.startswith(b"x-forwarded-")
        ]
        if private:
            # The gateway's credentials are not the service's business (gateway/credentials.py).
            out = [(k, without_cookie(v) if k == b"cookie" else v) for k, v in out if k != b"x-access-token"]
            out = [(k, v) for k, v in out if k != b"cookie" or v]
        out.append((b"x-forwarded-for", self._peer_ip))
        out.append((b"x-forwarded-proto", self.client.scheme.encode()))
        out.append((b"x-forwarded-host", head.host))
        out.append((b"x-request-id", rid.encode()))
        if upgrade:
            out.append((b"connection", b"upgrade"))
            out.append((b"upgrade", head.upgrade or b""))
        return out

    async def _forward(self, req: h11.Request, head: RequestHead, fwd: Forward, rid: str) -> tuple[int, bool]:
        upgrade = head.is_upgrade
        target = without_query_token(req.target) if fwd.private else req.target
        headers = self._upstream_headers(head, rid, upgrade, fwd.private)
        out_req = h11.Request(method=req.method, target=target, headers=headers)
        has_body = self.conn.their_state is h11.SEND_BODY and (
            head.transfer_encoding is not None or (head.content_length or b"0") != b"0"
        )
        up = await self._connect(fwd)
        try:
            await self._send_upstream(up, fwd, out_req)
            return await self._relay(up, fwd, upgrade, has_body)
        except _UpstreamSilent:
            await self.pool.discard(up)
            if has_body or not up.reused:
                raise
        except BaseException:
            await self.pool.discard(up)
            raise
        # The upstream closed this pooled connection while it sat idle. Our write to it
        # usually still succeeds, so that shows only as a close with no answer. Without a
        # body the request can be replayed once on a fresh connection; if the first
        # attempt took the client's end of it already, the replay must send that itself.
        up = await self._connect(fwd, fresh=True)
        try:
            await self._send_upstream(up, fwd, out_req)
            if self.conn.their_state is not h11.SEND_BODY:
                await self._send_upstream(up, fwd, h11.EndOfMessage())
            return await self._relay(up, fwd, upgrade, has_body)
        except BaseException:
            await self.pool.discard(up)
            raise

    async def _send_upstream(self, up: UpstreamConnection, fwd: Forward, *events: h11.Event) -> None:
        try:
            for event in events:
                await _send(up.conn, up.stream, event)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            raise _UpstreamSilent(502, "bad_gateway", f"{fwd.target} closed the connection") from None

    async def _connect(self, fwd: Forward, *, fresh: bool = False) -> UpstreamConnection:
        try:
            return await (self.pool.connect(fwd.address) if fresh else self.pool.acquire(fwd.address))
        except UpstreamUnavailable as exc:
            if fwd.port is not None and fwd.sandbox_id is not None:
                message = f"nothing is listening on port {fwd.port} in sandbox {fwd.sandbox_id}"
            else:
                message = f"{fwd.target} is not answering"
            log.event("gateway.upstream_unavailable", target=str(fwd.address), error=str(exc))
            raise _UpstreamFailed(502, "bad_gateway", message) from None

    async def _relay(self, up: UpstreamConnection, fwd: Forward, upgrade: bool, has_body: bool) -> tuple[int, bool]:
        if upgrade:
            # Take the EndOfMessage now, so the client's state is settled before the
            # 101 comes back; after it, the tunnel watches both sides.
            await self._pump_request_body(up)
            status, switched = await self._pump_response(up, fwd, upgrade)
        else:
            self._body_forwarded = self._answered = False
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump_request_body_then_watch, up)
                    status, switched = await self._pump_response(up, fwd, upgrade)
                    # An upstream may answer before the body ends (an early 413, say).
                    nursery.cancel_scope.cancel()
            except BaseExceptionGroup as group:
                raise _collapse(group) from None
        if switched:
            await self._tunnel(up)
            return status, False
        # The answer came before the whole request went up, or the send was cancelled
        # half-way (h11 counts bytes as sent before they leave): the upstream may still
        # wait for them and take our next request as their end, or (hypercorn) hang on
        # it. The API answers a POST with a bad key as soon as its head arrives, so this
        # is common. An error answer to a request with a body may have been such an early
        # one even when the body seemed to go first. None of these is pooled.
        # (Without a body the whole request is its head: nothing can arrive late. The
        # pool still checks both h11 states before keeping a connection.)
        pooled = upgrade or not has_body or (self._body_forwarded and status < 400)
        if not pooled:
            await self.pool.discard(up)
        if self.conn.their_state is h11.SEND_BODY:
            # The client has not finished its body, and was not told to close: it will
            # send its next request on this connection. Read the rest (small ones only)
            # so that request is served, not swallowed by a lingering close.
            await self.pool.discard(up)
            if await self._discard_body():
                return status, not self.drain.draining
            return status, False
        if self.conn.their_state not in (h11.DONE, h11.MUST_CLOSE):
            # The request body never ended: neither side of this exchange can be reused.
            # (MUST_CLOSE is a complete request whose client asked to close after it:
            # the upstream connection is still good.)
            await self.pool.discard(up)
            return status, False
        if pooled:
            await self.pool.release(up)
        return status, not self.drain.draining

    async def _pump_request_body_then_watch(self, up: UpstreamConnection) -> None:
        """The request body, then: notice a client that leaves before its response ends.

        A long answer that is quiet (a code execution, a long poll) would otherwise
        keep the upstream working for nobody until its next byte failed to go out.
        Leaving cancels the response and closes the upstream connection, which is
        how the upstream learns of it.
        """
        whole = await self._pump_request_body(up)
        # Whole, and before the answer began: an upstream that answered first (hypercorn
        # does, for an early 401) hangs on its next request once the rest arrives.
        self._body_forwarded = whole and not self._answered
        if self.conn.their_state is not h11.DONE:
            return
        # Most answers come sooner: watching from the start would cost every request a
        # read that finds nothing.
        await trio.sleep(WATCH_CLIENT_AFTER)
        try:
            data = await self.stream.receive_some(CHUNK)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            data = b""
        if not data:
            if self.conn.our_state in (h11.DONE, h11.MUST_CLOSE):
                # The response went out whole and the client closed after it, before the
                # pump got round to noticing it was done: that is a normal end.
                self.conn.receive_data(b"")
                return
            raise _ClientGone("client closed before its response ended")
        self.conn.receive_data(bytes(data))  # a pipelined request: kept for the next cycle

    async def _pump_request_body(self, up: UpstreamConnection) -> bool:
        """Forward the request body; True once all of it went up."""
        while self.conn.their_state is h11.SEND_BODY:
            event = await self._read_body_event()
            if isinstance(event, h11.Data | h11.EndOfMessage):
                try:
                    await _send(up.conn, up.stream, event)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    # Upstream stopped reading; its response (or its absence) tells the rest.
                    return False
            elif isinstance(event, h11.ConnectionClosed):
                raise _ClientGone("client closed mid-body")
        return True

    async def _await_answer(self, up: UpstreamConnection, fwd: Forward) -> None:
        """Wait for the upstream's first bytes, telling "closed without a word" from a bad answer.

        h11 reports an upstream that closes before its response head as a protocol error,
        the same as garbage; only the silent close makes a stale pooled connection.
        """
        if up.conn.trailing_data[0]:
            return
        try:
            with trio.fail_after(self.limits.upstream_idle_timeout):
                data = await up.stream.receive_some(CHUNK)
        except trio.TooSlowError:
            raise self._stalled(fwd) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            data = b""
        if not data:
            raise _UpstreamSilent(502, "bad_gateway", f"{fwd.target} closed the connection without answering")
        up.conn.receive_data(bytes(data))

    def _stalled(self, fwd: Forward) -> _UpstreamFailed:
        return _UpstreamFailed(
            504, "gateway_timeout", f"{fwd.target} did not answer within {self.limits.upstream_idle_timeout:g} s"
        )

    async def _pump_response(self, up: UpstreamConnection, fwd: Forward, upgrade: bool) -> tuple[int, bool]:
        """Relay the upstream's response. What one upstream read yields (head, body, end)
        goes to the client in one write: a small response costs one send, not three."""
        status = 0
        head_sent = False
        pending = bytearray()

        async def flush() -> None:
            if pending:
                data = bytes(pending)
                pending.clear()
                await self.stream.send_all(data)
                self._bytes_out += len(data)

        await self._await_answer(up, fwd)
        self._answered = True
        while True:
            try:
                event: object = up.conn.next_event()
                if event is h11.NEED_DATA:
                    # All the upstream sent so far is relayed before waiting for more.
                    try:
                        await flush()
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                        raise _ClientGone(str(exc)) from None
                    event = await _read_event(up.conn, up.stream, self.limits.upstream_idle_timeout)
            except trio.TooSlowError:
                if head_sent:
                    raise _ClientGone("upstream stalled mid-response") from None
                raise self._stalled(fwd) from None
            except (h11.RemoteProtocolError, trio.BrokenResourceError, OSError) as exc:
                if head_sent:
                    raise _ClientGone(f"upstream broke mid-response: {exc}") from None
                raise _UpstreamFailed(502, "bad_gateway", f"{fwd.target} sent an invalid response ({exc})") from None
            try:
                if isinstance(event, h11.InformationalResponse):
                    if event.status_code == 101:
                        if not upgrade:
                            raise _UpstreamFailed(502, "bad_gateway", f"{fwd.target} switched protocols unasked")
                        headers = _strip_hop_by_hop(list(event.headers))
                        headers += [
                            (b"connection", b"upgrade"),
                            (b"upgrade", _header(list(event.headers), b"upgrade") or b""),
                        ]
                        pending += self.conn.send(h11.InformationalResponse(status_code=101, headers=headers)) or b""
                        await flush()
                        return 101, True
                    pending += self.conn.send(event) or b""
                elif isinstance(event, h11.Response):
                    headers = _strip_hop_by_hop(list(event.headers))
                    if self.drain.draining:
                        headers.append((b"connection", b"close"))
                    response = h11.Response(status_code=event.status_code, headers=headers, reason=event.reason)
                    pending += self.conn.send(response) or b""
                    status, head_sent = event.status_code, True
                elif isinstance(event, h11.Data):
                    pending += self.conn.send(event) or b""
                    if len(pending) >= CHUNK:
                        await flush()
                elif isinstance(event, h11.EndOfMessage):
                    pending += self.conn.send(h11.EndOfMessage()) or b""
                    await flush()
                    return status, False
                elif isinstance(event, h11.ConnectionClosed):
                    await flush()
                    if head_sent:
                        raise _ClientGone("upstream closed mid-response")
                    raise _UpstreamFailed(502, "bad_gateway", f"{fwd.target} closed the connection without answering")
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise _ClientGone(str(exc)) from None

    async def _tunnel(self, up: UpstreamConnection) -> None:
        client_rest, _ = self.conn.trailing_data
        upstream_rest, _ = up.conn.trailing_data
        try:
            if upstream_rest:
                await self.stream.send_all(upstream_rest)
                self._bytes_out += len(upstream_rest)
            if client_rest:
                await up.stream.send_all(client_rest)
                self._tunnelled_in += len(client_rest)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await self.pool.discard(up)
            return
        to_upstream, to_client = await splice(self.stream, up.stream, idle_timeout=self.limits.tunnel_idle_timeout)
        self._tunnelled_in += to_upstream
        self._bytes_out += to_client
        await self.pool.discard(up)
