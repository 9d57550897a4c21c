"""Where the gateway forwards to, and a keep-alive pool of upstream connections."""

from __future__ import annotations

from dataclasses import dataclass, field

import h11
import trio

MAX_HEAD = 64 * 1024


@dataclass(frozen=True)
class TcpAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class UnixAddress:
    path: str

    def __str__(self) -> str:
        return f"unix:{self.path}"


Address = TcpAddress | UnixAddress


class UpstreamUnavailable(Exception):
    """Nothing accepted the connection (refused, unreachable, or too slow)."""


@dataclass(eq=False)
class UpstreamConnection:
    address: Address
    stream: trio.abc.Stream
    conn: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD))
    idle_since: float = 0.0
    # True once it has carried a request: a pooled connection may have been closed
    # by the other side meanwhile, which is worth one retry on a fresh connection.
    reused: bool = False

    def reusable(self) -> bool:
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE


async def open_stream(address: Address, *, timeout: float) -> trio.abc.Stream:
    try:
        with trio.fail_after(timeout):
            if isinstance(address, UnixAddress):
                return await trio.open_unix_socket(address.path)
            return await trio.open_tcp_stream(address.host, address.port)
    except (OSError, trio.TooSlowError) as exc:
        raise UpstreamUnavailable(str(exc) or type(exc).__name__) from exc


class Pool:
    """Idle upstream connections by address, newest first; stale ones are dropped."""

    def __init__(self, *, idle_timeout: float = 30.0, per_address: int = 32, connect_timeout: float = 5.0) -> None:
        self.idle_timeout = idle_timeout
        self.per_address = per_address
        self.connect_timeout = connect_timeout
        self._idle: dict[Address, list[UpstreamConnection]] = {}

    async def acquire(self, address: Address) -> UpstreamConnection:
        idle = self._idle.get(address, [])
        now = trio.current_time()
        while idle:
            up = idle.pop()
            if now - up.idle_since < self.idle_timeout:
                up.reused = True
                return up
            await _close(up)
        return await self.connect(address)

    async def connect(self, address: Address) -> UpstreamConnection:
        """A fresh connection, bypassing the idle ones."""
        stream = await open_stream(address, timeout=self.connect_timeout)
        return UpstreamConnection(address=address, stream=stream)

    async def release(self, up: UpstreamConnection) -> None:
        if not up.reusable():
            await _close(up)
            return
        up.conn.start_next_cycle()
        up.idle_since = trio.current_time()
        idle = self._idle.setdefault(up.address, [])
        idle.append(up)
        if len(idle) > self.per_address:
            await _close(idle.pop(0))

    async def discard(self, up: UpstreamConnection) -> None:
        await _close(up)

    async def close_all(self) -> None:
        for idle in self._idle.values():
            for up in idle:
                await _close(up)
        self._idle.clear()


async def _close(up: UpstreamConnection) -> None:
    with trio.CancelScope(shield=True):
        await trio.aclose_forcefully(up.stream)
