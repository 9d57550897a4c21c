"""The gateway's listening side: accept, sniff TLS or plain HTTP, terminate TLS, serve.

One port takes both, because the JS SDK talks plain HTTP to `*.localhost` while
everything else uses TLS: the first byte decides (0x16 opens a TLS handshake
record; an HTTP method starts with a letter).
"""

from __future__ import annotations

import ssl
import traceback
from dataclasses import dataclass, field

import trio

from appliance import log
from gateway.drain import Drain
from gateway.proxy import ClientInfo, HttpLimits, HttpSession, Router
from gateway.streams import PrefixedStream
from gateway.tls.clienthello import looks_like_tls
from gateway.upstream import Pool


@dataclass(frozen=True, kw_only=True)
class GatewayLimits:
    sniff_timeout: float = 10.0
    handshake_timeout: float = 10.0
    drain_timeout: float = 10.0
    http: HttpLimits = field(default_factory=HttpLimits)


class Gateway:
    def __init__(
        self,
        *,
        router: Router,
        ssl_context: ssl.SSLContext,
        pool: Pool,
        limits: GatewayLimits = GatewayLimits(),
        worker: int = 0,
    ) -> None:
        self.router = router
        # Which gateway process this is (0: the appliance's own), for the access log.
        self.worker = worker
        self.ssl_context = ssl_context
        self.pool = pool
        self.limits = limits
        self.drain = Drain()

    async def handle(self, stream: trio.SocketStream) -> None:
        peer = _peer(stream)
        with self.drain.connection():
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
            first = await stream.receive_some(4096)
        if not first:
            return
        client: trio.abc.Stream = PrefixedStream(stream, first)
        scheme = "http"
        if looks_like_tls(first[0]):
            tls = trio.SSLStream(client, self.ssl_context, server_side=True, https_compatible=True)
            try:
                with trio.fail_after(self.limits.handshake_timeout):
                    await tls.do_handshake()
            except (trio.BrokenResourceError, trio.TooSlowError) as exc:
                log.event("gateway.tls_failed", peer=peer, error=_tls_error(exc))
                return
            client, scheme = tls, "https"
        session = HttpSession(
            client,
            client=ClientInfo(peer=peer, scheme=scheme),
            router=self.router,
            pool=self.pool,
            drain=self.drain,
            limits=self.limits.http,
            worker=self.worker,
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
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                # EMFILE and friends: back off rather than spin (as trio's serve_listeners).
                log.event("gateway.accept_error", error=str(exc))
                await trio.sleep(0.1)
                continue
            connections.start_soon(self.handle, stream)


def _peer(stream: trio.SocketStream) -> str:
    try:
        addr = stream.socket.getpeername()
    except OSError:
        return "?"
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _tls_error(exc: BaseException) -> str:
    cause = exc.__cause__
    return str(cause) if cause is not None else (str(exc) or type(exc).__name__)
