"""Asyncio HTTP/1.1 server on h11: listeners, one protocol object per connection.

h11 does the wire format (framing, chunked bodies, keep-alive rules); this
module moves bytes between it and the socket and keeps every wait bounded:

    idle_timeout    for the first byte of a request (then the connection closes quietly)
    head_timeout    from that byte until the head is complete (408)
    body_timeout    between two pieces of a request body the handler waits for (408)
    write_timeout   for the peer to take what was written (then the connection is dropped)

Received bytes wait in an inbox until the request being served asks for
them; reading from the socket pauses while the inbox is full, so a handler
that consumes its body slowly slows the client down instead of growing
memory. Each request is served in a task of its own: when the client goes
away (EOF or reset) while it runs, ``request.disconnected`` is set and the
task is cancelled, which stops a streamed response and its producer.

A request that breaks HTTP gets its error status as JSON and the connection
closes after a linger: our side is shut for writing and input is discarded
for a moment, so the reply is not lost to a TCP reset while the peer is
still sending. The same linger ends a connection whose request body was left
unread beyond what is worth discarding.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable
from typing import Callable

import h11

from agent import log
from agent.http.message import DEFAULT_READ_LIMIT, REASONS, HttpError, Request, Response, error_response

App = Callable[[Request], Awaitable[Response]]

MAX_HEAD = 64 * 1024
INBOX_HIGH_WATER = 256 * 1024  # received bytes held for the handler before reading pauses
DISCARD_BYTES = 256 * 1024  # unread request body skipped to keep a connection alive
DISCARD_SECONDS = 2.0
LINGER_SECONDS = 1.0
LINGER_BYTES = 256 * 1024
BODILESS_STATUSES = (204, 304)


class _Timeout(Exception):
    """A deadline passed while waiting for the peer."""


class _BrokenStream(Exception):
    """A streamed response body failed after its head was sent."""


class HttpServer:
    def __init__(
        self,
        app: App,
        *,
        idle_timeout: float = 65.0,
        head_timeout: float = 30.0,
        body_timeout: float = 65.0,
        write_timeout: float = 30.0,
        max_head: int = MAX_HEAD,
        max_body: int = DEFAULT_READ_LIMIT,
    ) -> None:
        """``max_body`` is what ``Request.read()`` accepts when not given a limit."""
        self.app = app
        self.idle_timeout = idle_timeout
        self.head_timeout = head_timeout
        self.body_timeout = body_timeout
        self.write_timeout = write_timeout
        self.max_head = max_head
        self.max_body = max_body
        self.closing = False
        self._servers: list[asyncio.AbstractServer] = []
        self.connections: set[_Connection] = set()

    async def listen(self, port: int, *, host: str = "0.0.0.0", ipv6_host: str | None = "::") -> list[tuple[str, int]]:
        """Listen on ``host`` (required) and ``ipv6_host`` (if the machine has IPv6).

        Returns the bound (host, port) pairs; with port 0 both share the port
        the kernel chose for the first.
        """
        loop = asyncio.get_running_loop()
        sockets = [_bind(socket.AF_INET, host, port)]
        port = sockets[0].getsockname()[1]
        if ipv6_host is not None:
            try:
                sockets.append(_bind(socket.AF_INET6, ipv6_host, port))
            except OSError as exc:
                log.event("ipv6_unavailable", error=str(exc))
        bound = []
        for sock in sockets:
            server = await loop.create_server(lambda: _Connection(self), sock=sock)
            self._servers.append(server)
            bound.append((sock.getsockname()[0], port))
        return bound

    async def close(self, timeout: float = 1.0) -> None:
        """Stop accepting; close idle connections; give requests in flight ``timeout`` seconds, then drop them."""
        self.closing = True
        for server in self._servers:
            server.close()
        for connection in list(self.connections):
            if connection.idle:
                connection.abort()
        tasks = [c.task for c in self.connections if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        for connection in list(self.connections):
            connection.abort()
        # Handlers left running would be cancelled by asyncio.run, which some
        # Python versions (3.12.1) report as errors from inside asyncio.
        tasks = [c.task for c in self.connections if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)


class _Connection(asyncio.Protocol):
    """One client connection: transport callbacks feed it, its task serves requests in order."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=server.max_head)
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._peer: object = None
        self._inbox = bytearray()
        self._reading_paused = False
        self._eof = False  # the peer sends nothing more
        self._eof_fed = False  # ... and h11 knows it
        self._lost = False
        self._data_waiter: asyncio.Future[None] | None = None
        self._writing_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._request: Request | None = None
        self._request_task: asyncio.Task[bool] | None = None
        self.task: asyncio.Task[None] | None = None
        self.idle = True  # waiting for the first byte of a request: safe to close

    # -- transport callbacks ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._peer = transport.get_extra_info("peername")
        self._server.connections.add(self)
        self.task = self._loop.create_task(self._run())

    def data_received(self, data: bytes) -> None:
        self._inbox += data
        if len(self._inbox) >= INBOX_HIGH_WATER and not self._reading_paused and self._transport is not None:
            self._transport.pause_reading()
            self._reading_paused = True
        self._wake_reader()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake_reader()
        self._peer_gone()
        return True  # keep our side open: a reply may still be on its way

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._eof = True
        self._wake_reader()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("connection lost"))
        self._peer_gone()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # -- the connection's task ---------------------------------------------

    async def _run(self) -> None:
        try:
            while await self._serve_one():
                self._h11.start_next_cycle()
        except Exception as exc:
            log.event("connection_error", error=repr(exc))
            self.abort()
        finally:
            if self._request_task is not None and not self._request_task.done():
                self._request_task.cancel()
            if self._transport is not None and not self._transport.is_closing():
                self._transport.close()
            self._server.connections.discard(self)

    async def _serve_one(self) -> bool:
        """Serve the next request; True when the connection can carry another."""
        self.idle = True
        event: object = None
        try:
            if not await self._wait_for_first_byte():
                return False
            self.idle = False
            event = await self._next_event(self._loop.time() + self._server.head_timeout)
        except _Timeout:
            await self._reject(408, "request_timeout", "the request did not arrive in time")
            return False
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            await self._reject(status, _ERROR_CODES.get(status, "bad_request"), str(exc) or "malformed request")
            return False
        if not isinstance(event, h11.Request):
            return False  # closed between requests (ConnectionClosed)
        try:
            request = self._make_request(event)
        except HttpError as exc:
            request = None
            task = self._loop.create_task(self._send(None, error_response(exc.status, exc.code, exc.message)))
        else:
            task = self._loop.create_task(self._respond(request))
        self._request = request
        self._request_task = task
        try:
            # wait() rather than await: the request task may be cancelled
            # (client gone) without this connection task being cancelled.
            await asyncio.wait([task])
        finally:
            self._request = None
            self._request_task = None
        if task.cancelled() or not task.result():
            self.abort()
            return False
        return await self._finish_exchange()

    def _make_request(self, event: h11.Request) -> Request:
        return Request(
            method=event.method.decode("ascii"),
            target=event.target.decode("latin-1"),
            headers=[(name.decode("latin-1"), value.decode("latin-1")) for name, value in event.headers],
            version=event.http_version.decode("ascii"),
            receive=self._receive_body,
            default_limit=self._server.max_body,
            client=self._peer,
        )

    async def _respond(self, request: Request) -> bool:
        try:
            response = await self._server.app(request)
        except HttpError as exc:
            response = error_response(exc.status, exc.code, exc.message, headers=exc.headers)
        except Exception as exc:
            log.event("handler_error", method=request.method, path=request.path[:200], error=repr(exc))
            response = error_response(500, "internal", "internal error")
        return await self._send(request, response)

    async def _finish_exchange(self) -> bool:
        """After a response: True when the next request may follow on this connection."""
        if self._h11.our_state is not h11.DONE or self._server.closing:
            await self._close_after_request()
            return False
        if self._h11.their_state is h11.SEND_BODY:
            # The handler answered without reading the whole body: skip a
            # little of it to keep the connection, else give up on it.
            try:
                if not await self._discard_body():
                    await self._close_after_request()
                    return False
            except (_Timeout, h11.RemoteProtocolError):
                await self._close_after_request()
                return False
        return self._h11.their_state is h11.DONE

    # -- reading -------------------------------------------------------------

    def _wake_reader(self) -> None:
        waiter = self._data_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait_for_data(self, timeout: float | None) -> bool:
        """Wait until bytes or EOF arrive; False when ``timeout`` passed first."""
        if self._inbox or self._eof:
            return True
        if timeout is not None and timeout <= 0:
            return False
        waiter = self._loop.create_future()
        self._data_waiter = waiter
        try:
            await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            return False
        finally:
            self._data_waiter = None
        return True

    async def _wait_for_first_byte(self) -> bool:
        if self._h11.trailing_data[0]:
            return True  # a pipelined request is already buffered
        if self._server.closing:
            return False
        return await self._wait_for_data(self._server.idle_timeout)

    def _take_inbox(self) -> None:
        self._h11.receive_data(bytes(self._inbox))
        self._inbox.clear()
        if self._reading_paused and self._transport is not None and not self._lost:
            self._reading_paused = False
            self._transport.resume_reading()

    async def _next_event(self, deadline: float | None) -> object:
        """The next h11 event, reading as needed until ``deadline`` (raises _Timeout)."""
        while True:
            event = self._h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self._inbox:
                self._take_inbox()
                continue
            if self._eof:
                if self._eof_fed:
                    return h11.ConnectionClosed()
                self._eof_fed = True
                self._h11.receive_data(b"")
                continue
            timeout = None if deadline is None else deadline - self._loop.time()
            if not await self._wait_for_data(timeout):
                raise _Timeout

    async def _receive_body(self) -> bytes | None:
        """The next piece of the current request's body (None at its end), for ``Request.body``."""
        if self._h11.their_state is not h11.SEND_BODY:
            return None
        if self._h11.they_are_waiting_for_100_continue:
            self._write(self._h11.send(h11.InformationalResponse(status_code=100, headers=[])))
        try:
            event = await self._next_event(self._loop.time() + self._server.body_timeout)
        except _Timeout:
            raise HttpError(408, "request_timeout", "the request body stopped arriving") from None
        except h11.RemoteProtocolError as exc:
            raise HttpError(400, "bad_request", f"malformed request body: {exc}") from None
        if isinstance(event, h11.Data):
            return bytes(event.data)
        if isinstance(event, h11.EndOfMessage):
            return None
        raise HttpError(400, "bad_request", "the connection closed before the request body was complete")

    async def _discard_body(self) -> bool:
        """Read past the rest of the request body; False when it is too long to bother."""
        deadline = self._loop.time() + DISCARD_SECONDS
        discarded = 0
        while True:
            event = await self._next_event(deadline)
            if isinstance(event, h11.Data):
                discarded += len(event.data)
                if discarded > DISCARD_BYTES:
                    return False
            else:
                return isinstance(event, h11.EndOfMessage)

    def _peer_gone(self) -> None:
        request, task = self._request, self._request_task
        if request is not None:
            request.disconnected.set()
        if task is not None and not task.done():
            task.cancel()

    # -- writing -------------------------------------------------------------

    def _write(self, data: bytes | None) -> None:
        if data and self._transport is not None and not self._lost:
            self._transport.write(data)

    async def _drain(self) -> None:
        if self._lost:
            raise ConnectionResetError("connection lost")
        if not self._writing_paused:
            return
        waiter = self._loop.create_future()
        self._drain_waiter = waiter
        try:
            await asyncio.wait_for(waiter, self._server.write_timeout)
        finally:
            self._drain_waiter = None

    async def _send(self, request: Request | None, response: Response) -> bool:
        """Write ``response``; False when the connection must be dropped (peer gone, broken stream)."""
        head_only = request is not None and request.method == "HEAD"
        body = response.body
        headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in response.headers]
        has_length = any(name.lower() == b"content-length" for name, _ in headers)
        bodiless = response.status in BODILESS_STATUSES
        if isinstance(body, (bytes, bytearray)) and not has_length and not bodiless:
            headers.append((b"content-length", str(len(body)).encode()))
        if self._server.closing:
            headers.append((b"connection", b"close"))
        try:
            self._write(
                self._h11.send(
                    h11.Response(
                        status_code=response.status,
                        headers=headers,
                        reason=REASONS.get(response.status, "").encode(),
                    )
                )
            )
            if isinstance(body, (bytes, bytearray)):
                if body and not head_only and not bodiless:
                    self._write(self._h11.send(h11.Data(data=bytes(body))))
            elif head_only or bodiless:
                await _close_iterator(body)
            else:
                await self._stream(body)
            self._write(self._h11.send(h11.EndOfMessage()))
            await self._drain()
        except (OSError, asyncio.TimeoutError):
            if request is not None:
                request.disconnected.set()  # the peer is gone or stopped reading
            return False
        except (h11.LocalProtocolError, _BrokenStream) as exc:
            # A response HTTP cannot carry (a body that does not match its
            # Content-Length) or a producer that failed: dropping the
            # connection is the only way left to tell the client it is cut.
            log.event("response_error", status=response.status, error=str(exc))
            return False
        return True

    async def _stream(self, body: AsyncIterator[bytes]) -> None:
        try:
            async for chunk in body:
                if chunk:
                    self._write(self._h11.send(h11.Data(data=chunk)))
                    await self._drain()
        except (OSError, asyncio.TimeoutError, h11.LocalProtocolError):
            raise
        except Exception as exc:
            raise _BrokenStream(f"the response stream failed: {exc!r}") from exc
        finally:
            await _close_iterator(body)

    # -- closing -------------------------------------------------------------

    async def _reject(self, status: int, code: str, message: str) -> None:
        """Answer a request h11 could not parse, then close after a linger."""
        log.event("http_error", status=status, code=code, message=message[:200])
        body = json.dumps({"code": code, "message": message}).encode()
        head = (
            f"HTTP/1.1 {status} {REASONS.get(status, '')}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        self._write(head.encode("latin-1") + body)
        await self._linger()

    async def _close_after_request(self) -> None:
        if self._h11.their_state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED):
            return  # the client is not sending: a plain close loses nothing
        await self._linger()

    async def _linger(self) -> None:
        """Shut our side, then discard input briefly so our last reply is not reset away."""
        transport = self._transport
        if transport is None or self._lost:
            return
        try:
            await self._drain()
            if transport.can_write_eof():
                transport.write_eof()
            deadline = self._loop.time() + LINGER_SECONDS
            discarded = 0
            while discarded < LINGER_BYTES and not self._eof and not self._server.closing:
                discarded += len(self._inbox)
                self._inbox.clear()
                if self._reading_paused and not self._lost:
                    self._reading_paused = False
                    transport.resume_reading()
                if not await self._wait_for_data(deadline - self._loop.time()):
                    break
        except (OSError, asyncio.TimeoutError):
            pass


_ERROR_CODES = {
    400: "bad_request",
    408: "request_timeout",
    413: "payload_too_large",
    414: "uri_too_long",
    431: "headers_too_large",
    501: "not_implemented",
    505: "version_not_supported",
}


async def _close_iterator(body: object) -> None:
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        await aclose()


def _bind(family: socket.AddressFamily, host: str, port: int) -> socket.socket:
    # IPPROTO_TCP named explicitly: asyncio turns TCP_NODELAY on for accepted
    # sockets only when the listener's proto says TCP, and without it the last
    # small frames of every answer wait ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # Separate from the IPv4 listener, which already holds the port.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
