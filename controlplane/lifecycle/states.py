"""The sandbox state machine, written as data.

    starting -> running -> (pausing -> paused -> resuming -> running)* -> terminating -> terminated

`failed` is reachable from every transitional state (starting, pausing, resuming,
terminating) and a failed sandbox can still be terminated. `terminated` is final.
The lifecycle service asks `check(current, target)` before every move and persists
the new state first, so the database always holds a state this table allows.

Only three values are shown to the official Python SDK in get and list responses
(`running`, `paused`, `terminated`); `sdk_status` folds the rest onto those.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    RESUMING = "resuming"
    TERMINATING = "terminating"
    TERMINATED = "terminated"
    FAILED = "failed"


S = State
TRANSITIONS: dict[State, frozenset[State]] = {
    S.STARTING: frozenset({S.RUNNING, S.FAILED, S.TERMINATING}),
    S.RUNNING: frozenset({S.PAUSING, S.TERMINATING}),
    S.PAUSING: frozenset({S.PAUSED, S.RUNNING, S.FAILED, S.TERMINATING}),
    S.PAUSED: frozenset({S.RESUMING, S.TERMINATING}),
    S.RESUMING: frozenset({S.RUNNING, S.PAUSED, S.FAILED, S.TERMINATING}),
    S.TERMINATING: frozenset({S.TERMINATED, S.FAILED}),
    S.TERMINATED: frozenset(),
    S.FAILED: frozenset({S.TERMINATING}),
}

# States in which the sandbox's processes exist and may hold resources.
LIVE = frozenset({S.STARTING, S.RUNNING, S.PAUSING, S.PAUSED, S.RESUMING})

# The reason recorded on a sandbox that its timeout paused (auto_pause). Traffic for
# such a sandbox resumes it (wake on traffic); one paused through the API stays paused.
AUTO_PAUSE_REASON = "auto_pause"


def wakes_on_traffic(state: State, reason: str | None) -> bool:
    """Asleep by auto_pause (or being resumed from it): a request for it may wake it."""
    return state in (S.PAUSED, S.RESUMING) and reason == AUTO_PAUSE_REASON


class InvalidTransition(Exception):
    def __init__(self, current: State, target: State) -> None:
        super().__init__(f"sandbox is {current.value}; it cannot become {target.value}")
        self.current = current
        self.target = target


def can(current: State, target: State) -> bool:
    return target in TRANSITIONS[current]


def check(current: State, target: State) -> State:
    if not can(current, target):
        raise InvalidTransition(current, target)
    return target


def sdk_status(state: State) -> str:
    """The nearest of the three statuses the official Python SDK can parse."""
    if state in (S.PAUSED, S.PAUSING):
        return "paused"
    if state in (S.TERMINATED, S.TERMINATING, S.FAILED):
        return "terminated"
    return "running"
