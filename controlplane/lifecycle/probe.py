"""Readiness probe: wait until a sandbox's agent answers `GET /health` with a 2xx."""

from __future__ import annotations

import trio

_REQUEST = b"GET /health HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n"


async def agent_healthy(ip: str, port: int, *, timeout: float = 2.0) -> bool:
    with trio.move_on_after(timeout):
        try:
            stream = await trio.open_tcp_stream(ip, port)
        except OSError:
            return False
        async with stream:
            try:
                await stream.send_all(_REQUEST)
                head = b""
                while b"\r\n" not in head and len(head) < 1024:
                    chunk = await stream.receive_some(1024)
                    if not chunk:
                        break
                    head += chunk
            except (OSError, trio.BrokenResourceError):
                return False
        parts = head.split(b" ", 2)
        return len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and parts[1][:1] == b"2"
    return False


async def wait_until_healthy(ip: str, port: int, *, deadline: float, interval: float = 0.02) -> bool:
    """Poll until healthy or until `deadline` (trio.current_time() based)."""
    while trio.current_time() < deadline:
        if await agent_healthy(ip, port, timeout=max(0.1, min(2.0, deadline - trio.current_time()))):
            return True
        # Back off gently: the agent usually answers within ~100 ms of start.
        await trio.sleep(interval)
        interval = min(interval * 1.5, 0.25)
    return False
