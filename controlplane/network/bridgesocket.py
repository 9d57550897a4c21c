"""Binding the appliance's own services to the sandboxes' bridge gateway address."""

from __future__ import annotations

import socket

import trio

_IP_FREEBIND = 15  # linux/in.h: bind an address the host does not have (yet)


async def bind_on_bridge(sock: trio.socket.SocketType, address: str, port: int) -> None:
    """Bind `sock` to the gateway address, which appears only with the first container
    on the bridge: free-bind it so the service can start before that."""
    sock.setsockopt(socket.IPPROTO_IP, _IP_FREEBIND, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    await sock.bind((address, port))
