"""Asyncio HTTP/1.1 server: listeners, per-connection deadlines, a routes table.

Each connection reads bytes into an ``http1.RequestParser`` and answers the
requests it yields in order (keep-alive and pipelining). Every wait has a
deadline: ``idle_timeout`` for the first byte of a request, ``head_timeout``
from that byte until the whole request is in, ``write_timeout`` for the peer
to take a response. A request that breaks the protocol gets its error status
and the connection is closed after a short linger, so that the reply is not
lost to a TCP reset while the peer is still sending.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

from agent import log
from agent.http1 import (
    MAX_BODY,
    MAX_HEAD,
    ProtocolError,
    Request,
    RequestParser,
    Response,
    encode_response,
    error_response,
)

Handler = Callable[[Request], Awaitable[Response]]

READ_SIZE = 64 * 1024
LINGER_SECONDS = 1.0
LINGER_BYTES = 256 * 1024


class Routes:
    """Exact-path routes: path -> method -> handler. HEAD falls back to GET."""

    def __init__(self) -> None:
        self._by_path: dict[str, dict[str, Handler]] = {}

    def add(self, method: str, path: str, handler: Handler) -> None:
        self._by_path.setdefault(path, {})[method] = handler

    async def dispatch(self, request: Request) -> Response:
        methods = self._by_path.get(request.path)
        if methods is None:
            return error_response(404, "not_found", f"no route for {request.path[:200]}")
        handler = methods.get(request.method)
        if handler is None and request.method == "HEAD":
            handler = methods.get("GET")
        if handler is None:
            allowed = sorted(set(methods) | ({"HEAD"} if "GET" in methods else set()))
            return error_response(
                405,
                "method_not_allowed",
                f"{request.method} is not allowed on {request.path}",
                headers=[("Allow", ", ".join(allowed))],
            )
        return await handler(request)


class HttpServer:
    def __init__(
        self,
        routes: Routes,
        *,
        idle_timeout: float = 65.0,
        head_timeout: float = 30.0,
        write_timeout: float = 30.0,
        max_head: int = MAX_HEAD,
        max_body: int = MAX_BODY,
    ) -> None:
        self._routes = routes
        self._idle_timeout = idle_timeout
        self._head_timeout = head_timeout
        self._write_timeout = write_timeout
        self._max_head = max_head
        self._max_body = max_body
        self._servers: list[asyncio.AbstractServer] = []
        self._connections: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._closing = False

    async def listen(self, port: int, *, host: str = "0.0.0.0", ipv6_host: str | None = "::") -> list[tuple[str, int]]:
        """Listen on ``host`` (required) and ``ipv6_host`` (if the machine has IPv6).

        Returns the bound (host, port) pairs; with port 0 both share the port
        the kernel chose for the first.
        """
        sockets = [_bind(socket.AF_INET, host, port)]
        port = sockets[0].getsockname()[1]
        if ipv6_host is not None:
            try:
                sockets.append(_bind(socket.AF_INET6, ipv6_host, port))
            except OSError as exc:
                log.event("ipv6_unavailable", error=str(exc))
        bound = []
        for sock in sockets:
            server = await asyncio.start_server(self._serve, sock=sock, limit=READ_SIZE)
            self._servers.append(server)
            bound.append((sock.getsockname()[0], port))
        return bound

    async def close(self, timeout: float = 1.0) -> None:
        """Stop accepting, drop every open connection, and let their handlers finish."""
        self._closing = True
        for server in self._servers:
            server.close()
        for writer in list(self._connections):
            writer.transport.abort()
        # Handlers left running would be cancelled by asyncio.run, which some
        # Python versions (3.12.1) report as errors from inside asyncio.streams.
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=timeout)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        self._connections.add(writer)
        parser = RequestParser(max_head=self._max_head, max_body=self._max_body)
        try:
            await self._serve_requests(parser, reader, writer)
        except ProtocolError as exc:
            log.event("http_error", status=exc.status, code=exc.code, message=exc.message)
            await self._reject(exc, reader, writer)
        except (OSError, asyncio.TimeoutError):
            pass  # the peer went away or stopped reading: nobody to tell
        except Exception as exc:
            log.event("connection_error", error=repr(exc))
            writer.transport.abort()
        finally:
            self._connections.discard(writer)
            if task is not None:
                self._handlers.discard(task)
            writer.close()

    async def _serve_requests(
        self, parser: RequestParser, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            request = await self._read_request(parser, reader)
            if request is None:
                return
            response = await self._respond(request)
            keep_alive = request.keep_alive and not self._closing
            if not keep_alive:
                connection: str | None = "close"
            elif request.version < (1, 1):
                connection = "keep-alive"
            else:
                connection = None
            writer.write(encode_response(response, head_only=request.method == "HEAD", connection=connection))
            await self._drain(writer)
            if not keep_alive:
                return

    async def _read_request(self, parser: RequestParser, reader: asyncio.StreamReader) -> Request | None:
        """The next request, or None when the peer closed or idled out between requests."""
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while True:
            request = parser.next_request()
            if request is not None:
                return request
            if parser.pending:
                if deadline is None:
                    deadline = loop.time() + self._head_timeout
                timeout = deadline - loop.time()
            else:
                timeout = self._idle_timeout
            try:
                if timeout <= 0:
                    raise asyncio.TimeoutError
                data = await asyncio.wait_for(reader.read(READ_SIZE), timeout)
            except asyncio.TimeoutError:
                if parser.pending:
                    raise ProtocolError(408, "request_timeout", "the request did not arrive in time") from None
                return None
            if not data:
                return None  # closed, maybe mid-request: there is nobody to answer
            parser.feed(data)

    async def _respond(self, request: Request) -> Response:
        try:
            return await self._routes.dispatch(request)
        except Exception as exc:
            log.event("handler_error", method=request.method, path=request.path, error=repr(exc))
            return error_response(500, "internal", "internal error")

    async def _drain(self, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(writer.drain(), self._write_timeout)
        except asyncio.TimeoutError:
            writer.transport.abort()
            raise

    async def _reject(self, exc: ProtocolError, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Send the error, half-close, and discard input briefly before closing."""
        writer.write(encode_response(error_response(exc.status, exc.code, exc.message), connection="close"))
        loop = asyncio.get_running_loop()
        try:
            await self._drain(writer)
            if writer.can_write_eof():
                writer.write_eof()
            deadline = loop.time() + LINGER_SECONDS
            discarded = 0
            while discarded < LINGER_BYTES and not self._closing:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                data = await asyncio.wait_for(reader.read(READ_SIZE), timeout)
                if not data:
                    break
                discarded += len(data)
        except (OSError, asyncio.TimeoutError):
            pass


def _bind(family: socket.AddressFamily, host: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
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
