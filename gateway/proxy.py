"""HTTP/1.1 reverse proxying for one client connection, built on h11 on both sides.

One loop per client connection: read a request head, ask the router for a verdict,
then either answer an error ourselves or run one exchange with an upstream taken
from the keep-alive pool. Bodies stream in both directions at once (never buffered
whole), and a `101 Switching Protocols` from upstream turns the two connections into
a raw byte tunnel (WebSocket). Every read has a deadline from `HttpLimits`.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

import h11
import trio

from appliance import log
from gateway import errors
from gateway.access import Forward, Refuse, Verdict
from gateway.drain import Drain
from gateway.routing.hosts import InvalidHost, normalise_host
from gateway.streams import CHUNK, splice
from gateway.upstream import MAX_HEAD, Pool, UpstreamConnection, UpstreamUnavailable

# Headers that describe one hop, not the message (RFC 9110 section 7.6.1). Framing
# headers (Content-Length, Transfer-Encoding) are kept: h11 re-frames from them.
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade", b"proxy-authenticate"}
)
_MAX_DISCARD = 64 * 1024
# A client's X-Request-Id is passed on only if it is a valid header value after
# truncation; anything else (inner spaces, control bytes) gets a fresh id instead.
_CLIENT_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,64}")


@dataclass(frozen=True, kw_only=True)
class HttpLimits:
    head_timeout: float = 30.0
    keepalive_timeout: float = 75.0
    body_idle_timeout: float = 60.0
    upstream_idle_timeout: float = 600.0
    tunnel_idle_timeout: float = 3600.0


@dataclass(frozen=True, kw_only=True)
class ClientInfo:
    peer: str
    scheme: str


# host (normalised), X-Access-Token, whether the agent authorises this request itself -> verdict
Router = Callable[[str, str | None, bool], Verdict]


class _ClientGone(Exception):
    pass


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
    for kind in (_UpstreamFailed, _ClientGone):
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


def _is_upgrade(req: h11.Request) -> bool:
    return b"upgrade" in _connection_tokens(list(req.headers)) and _header(list(req.headers), b"upgrade") is not None


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
        worker: int = 0,
    ) -> None:
        self.stream = stream
        self.client = client
        self.router = router
        self.pool = pool
        self.drain = drain
        self.limits = limits
        self.worker = worker
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        # Of the request being answered: errors to Connect RPCs take Connect's shape.
        self._connect_kind: str | None = None
        self._content_type = ""

    async def run(self) -> None:
        first = True
        while True:
            request = await self._next_request(first)
            if request is None:
                return
            first = False
            if not await self._exchange(request):
                return
            if self.conn.our_state is h11.MUST_CLOSE or self.conn.their_state is h11.MUST_CLOSE:
                return
            try:
                self.conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _next_request(self, first: bool) -> h11.Request | None:
        try:
            # A pipelining client may have sent the next head already: it is in h11's buffer.
            event: object = self.conn.next_event()
            if event is h11.NEED_DATA:
                # Idle between requests: shutdown may close us here.
                data = None
                with (
                    self.drain.idle(),
                    trio.move_on_after(self.limits.head_timeout if first else self.limits.keepalive_timeout),
                ):
                    data = await self.stream.receive_some(CHUNK)
                if not data:
                    return None
                self.conn.receive_data(bytes(data))
                # The deadline covers the whole head, not each read: a client that trickles
                # a byte at a time must not hold the connection for ever.
                with trio.fail_after(self.limits.head_timeout):
                    event = await _read_event(self.conn, self.stream, self.limits.head_timeout)
        except h11.RemoteProtocolError as exc:
            await self._raw_error(exc.error_status_hint, "bad_request", f"malformed HTTP request: {exc}")
            return None
        except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return None
        if isinstance(event, h11.Request):
            return event
        return None

    async def _raw_error(self, status: int, error: str, message: str) -> None:
        """An error for a request h11 could not parse: write it by hand, then close."""
        rid = uuid.uuid4().hex[:16]
        ctype, body = errors.render(status, error, message, accept="", request_id=rid)
        head = (
            f"HTTP/1.1 {status} {_reason(status).decode()}\r\ncontent-type: {ctype}\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\nx-request-id: {rid}\r\n\r\n"
        ).encode()
        log.event("gateway.bad_request", request_id=rid, peer=self.client.peer, status=status, error=message)
        try:
            with trio.move_on_after(5):
                await self.stream.send_all(head + body)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    # -- one exchange ------------------------------------------------------------------

    async def _exchange(self, req: h11.Request) -> bool:
        """Handle one request; return whether the client connection may carry another."""
        headers = list(req.headers)
        rid_raw = (_header(headers, b"x-request-id") or b"")[:64]
        rid = rid_raw.decode("ascii") if _CLIENT_REQUEST_ID.fullmatch(rid_raw) else uuid.uuid4().hex[:16]
        accept = (_header(headers, b"accept") or b"").decode("latin-1")
        content_type = _header(headers, b"content-type") or b""
        self._content_type = content_type.decode("latin-1")
        self._connect_kind = errors.connect_kind(req.method, req.target.split(b"?", 1)[0], content_type)
        started = time.monotonic()
        host_raw = _header(headers, b"host") or b""
        try:
            host = normalise_host(host_raw)
        except InvalidHost as exc:
            verdict: Verdict = Refuse(400, "bad_host", f"invalid Host header: {exc}")
            host = host_raw.decode("latin-1")
        else:
            token = _header(headers, b"x-access-token")
            verdict = self.router(
                host, token.decode("latin-1") if token is not None else None, bypasses_token(req.method, req.target)
            )

        status, outcome = 0, "ok"
        try:
            if isinstance(verdict, Refuse):
                status = verdict.status
                return await self._refuse(verdict.status, verdict.error, verdict.message, accept, rid)
            try:
                status, keep = await self._forward(req, verdict, rid)
                return keep
            except _UpstreamFailed as exc:
                status, outcome = exc.status, exc.error
                if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    return await self._refuse(exc.status, exc.error, exc.message, accept, rid)
                return False
            except _ClientGone:
                outcome = "client_gone"
                return False
        finally:
            log.event(
                "gateway.request",
                request_id=rid,
                peer=self.client.peer,
                scheme=self.client.scheme,
                method=req.method.decode("latin-1"),
                host=host,
                path=req.target.split(b"?", 1)[0].decode("latin-1", "replace")[:200],
                status=status,
                outcome=outcome,
                worker=self.worker,
                ms=round((time.monotonic() - started) * 1000, 2),
            )

    async def _refuse(self, status: int, error: str, message: str, accept: str, rid: str) -> bool:
        keep = await self._discard_body()
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
        try:
            await _send(
                self.conn, self.stream, h11.Response(status_code=status, headers=headers, reason=_reason(status))
            )
            await _send(self.conn, self.stream, h11.Data(data=body))
            await _send(self.conn, self.stream, h11.EndOfMessage())
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, h11.LocalProtocolError):
            return False
        return keep and not self.drain.draining

    async def _discard_body(self) -> bool:
        """Read and drop a small request body so the connection can be reused."""
        seen = 0
        try:
            while self.conn.their_state is h11.SEND_BODY:
                event = await _read_event(self.conn, self.stream, self.limits.body_idle_timeout)
                if isinstance(event, h11.Data):
                    seen += len(event.data)
                    if seen > _MAX_DISCARD:
                        return False
                elif not isinstance(event, h11.EndOfMessage):
                    return False
        except (h11.RemoteProtocolError, trio.TooSlowError, trio.BrokenResourceError, OSError):
            return False
        return True

    def _upstream_headers(self, req: h11.Request, rid: str, upgrade: bool) -> list[tuple[bytes, bytes]]:
        headers = list(req.headers)
        out = _strip_hop_by_hop(headers)
        out = [(k, v) for k, v in out if k not in (b"x-forwarded-for", b"x-forwarded-proto", b"x-request-id")]
        forwarded_for = _header(headers, b"x-forwarded-for")
        peer_ip = self.client.peer.rsplit(":", 1)[0].strip("[]").encode()
        out.append((b"x-forwarded-for", forwarded_for + b", " + peer_ip if forwarded_for else peer_ip))
        out.append((b"x-forwarded-proto", self.client.scheme.encode()))
        out.append((b"x-request-id", rid.encode()))
        if upgrade:
            out.append((b"connection", b"upgrade"))
            out.append((b"upgrade", _header(headers, b"upgrade") or b""))
        return out

    async def _forward(self, req: h11.Request, fwd: Forward, rid: str) -> tuple[int, bool]:
        upgrade = _is_upgrade(req)
        out_req = h11.Request(method=req.method, target=req.target, headers=self._upstream_headers(req, rid, upgrade))
        has_body = self.conn.their_state is h11.SEND_BODY and (
            _header(list(req.headers), b"transfer-encoding") is not None
            or (_header(list(req.headers), b"content-length") or b"0") != b"0"
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
        if self.conn.their_state not in (h11.DONE, h11.MUST_CLOSE):
            # The request body never ended: neither side of this exchange can be reused.
            # (MUST_CLOSE is a complete request whose client asked to close after it:
            # the upstream connection is still good.)
            await self.pool.discard(up)
            return status, False
        await self.pool.release(up)
        return status, not self.drain.draining

    async def _pump_request_body_then_watch(self, up: UpstreamConnection) -> None:
        """The request body, then: notice a client that leaves before its response ends.

        A long answer that is quiet (a code execution, a long poll) would otherwise
        keep the upstream working for nobody until its next byte failed to go out.
        Leaving cancels the response and closes the upstream connection, which is
        how the upstream learns of it.
        """
        await self._pump_request_body(up)
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
            raise _ClientGone("client closed before its response ended")
        self.conn.receive_data(bytes(data))  # a pipelined request: kept for the next cycle

    async def _pump_request_body(self, up: UpstreamConnection) -> None:
        while self.conn.their_state is h11.SEND_BODY:
            try:
                event = await _read_event(self.conn, self.stream, self.limits.body_idle_timeout)
            except (h11.RemoteProtocolError, trio.TooSlowError, trio.BrokenResourceError, OSError) as exc:
                raise _ClientGone(str(exc)) from None
            if isinstance(event, h11.Data | h11.EndOfMessage):
                try:
                    await _send(up.conn, up.stream, event)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    # Upstream stopped reading; its response (or its absence) tells the rest.
                    return
            elif isinstance(event, h11.ConnectionClosed):
                raise _ClientGone("client closed mid-body")

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

        await self._await_answer(up, fwd)
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
            if client_rest:
                await up.stream.send_all(client_rest)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await self.pool.discard(up)
            return
        await splice(self.stream, up.stream, idle_timeout=self.limits.tunnel_idle_timeout)
        await self.pool.discard(up)
