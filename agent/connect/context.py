"""What a handler knows about its call: user, headers, deadline, whether the client left."""

from __future__ import annotations

import asyncio

from agent import users
from agent.connect.errors import ConnectError

KEEPALIVE_DEFAULT = 50
KEEPALIVE_MIN = 1
KEEPALIVE_MAX = 50
MAX_TIMEOUT_DIGITS = 10  # the Connect protocol's bound on Connect-Timeout-Ms


class RpcContext:
    """One call's context.

    ``user`` is the request's selected user, resolved on first use: an
    unknown name raises ConnectError ``invalid_argument`` naming it, which a
    handler lets through to fail the call. ``headers`` has lower-case names
    (repeated headers joined with ", "). ``deadline`` is event-loop time or
    None. ``closed`` is set when the client went away; the framework also
    cancels the handler then.
    """

    __slots__ = ("_user", "closed", "deadline", "headers", "procedure", "user_name")

    def __init__(
        self,
        *,
        procedure: str,
        user_name: str,
        headers: dict[str, str],
        deadline: float | None = None,
        closed: asyncio.Event | None = None,
    ) -> None:
        self.procedure = procedure
        self.user_name = user_name
        self.headers = headers
        self.deadline = deadline
        self.closed = closed if closed is not None else asyncio.Event()
        self._user: users.User | None = None

    @property
    def user(self) -> users.User:
        if self._user is None:
            try:
                self._user = users.lookup(self.user_name)
            except users.UnknownUser as exc:
                raise ConnectError("invalid_argument", str(exc)) from None
        return self._user

    def time_remaining(self) -> float | None:
        """Seconds until the deadline (may be negative), or None without one."""
        if self.deadline is None:
            return None
        return self.deadline - asyncio.get_running_loop().time()


def keepalive_interval(ctx: RpcContext) -> int:
    """Seconds between a stream's keepalive messages: the client's Keepalive-Ping-Interval, bounded to 1..50."""
    text = ctx.headers.get("keepalive-ping-interval", "").strip()
    if not (text.isascii() and text.isdigit()):
        return KEEPALIVE_DEFAULT
    return min(max(int(text), KEEPALIVE_MIN), KEEPALIVE_MAX)


def parse_timeout(value: str | None) -> float | None:
    """Connect-Timeout-Ms as seconds; ConnectError invalid_argument when malformed."""
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit() and 0 < len(text) <= MAX_TIMEOUT_DIGITS):
        raise ConnectError("invalid_argument", f"malformed Connect-Timeout-Ms {value[:20]!r}: expected 1-10 digits")
    return int(text) / 1000


def header_dict(headers: list[tuple[str, str]]) -> dict[str, str]:
    joined: dict[str, str] = {}
    for name, value in headers:
        joined[name] = f"{joined[name]}, {value}" if name in joined else value
    return joined
