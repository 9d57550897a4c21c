"""Relaying between two plain TCP sockets inside the kernel: splice(2) through a pipe.

A relay in Python costs a receive and a send per chunk, and each copies the bytes
into the interpreter and out again; measured on the egress proxy, that was 2.2
CPU-seconds per GB, a whole core at 400 MB/s. splice moves the pages from one
socket into a pipe and from the pipe into the other socket without them reaching
user space, so the process only wakes to move the next batch.

Only for two plain sockets (TLS must be ended in user space): gateway.streams.splice
runs this pump instead of its own for them, and keeps the rest (both directions,
the idle timeout) for both.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from typing import Protocol

import trio

# Per splice call; the pipe is made this large (where the kernel allows) so one
# wake-up moves up to this much.
CHUNK = 1 << 20
_F_SETPIPE_SZ = 1031  # linux/fcntl.h
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)


def available() -> bool:
    return hasattr(os, "splice")


class Activity(Protocol):
    """When bytes last moved either way (gateway.streams keeps it for the idle timeout)."""

    last: float


async def pump(src: trio.socket.SocketType, dst: trio.socket.SocketType, activity: Activity, moved: list[int]) -> bool:
    """src -> dst until src ends or either breaks; then tell dst no more is coming (always
    possible on TCP: returns True, as gateway.streams' pumps say whether the end was told)."""
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):
            fcntl.fcntl(write_end, _F_SETPIPE_SZ, CHUNK)
        while True:
            try:
                n = os.splice(src.fileno(), write_end, CHUNK, flags=_FLAGS)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(src)
                continue
            except OSError:
                break  # a reset: this direction is over
            if n == 0:
                break  # the peer's FIN
            activity.last = trio.current_time()
            left = n
            while left:
                try:
                    left -= os.splice(read_end, dst.fileno(), left, flags=_FLAGS)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(dst)
            moved[0] += n
            # A busy stream never hits EAGAIN: let the other tasks (and cancellation) in.
            await trio.sleep(0)
    except (OSError, trio.ClosedResourceError, trio.BrokenResourceError):
        # dst broke mid-batch, or one of the streams was closed by whoever ends the
        # connection (a released host port): this direction is over either way.
        pass
    finally:
        os.close(read_end)
        os.close(write_end)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)
    return True
