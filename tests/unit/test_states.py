"""The sandbox state machine: the transition table, checked edge by edge."""

from __future__ import annotations

import itertools

import pytest

from controlplane.lifecycle.states import (
    LIVE,
    TRANSITIONS,
    InvalidTransition,
    State,
    can,
    check,
    sdk_status,
)

S = State

ALLOWED = {
    (S.STARTING, S.RUNNING),
    (S.STARTING, S.FAILED),
    (S.STARTING, S.TERMINATING),
    (S.RUNNING, S.PAUSING),
    (S.RUNNING, S.TERMINATING),
    (S.PAUSING, S.PAUSED),
    (S.PAUSING, S.RUNNING),
    (S.PAUSING, S.FAILED),
    (S.PAUSING, S.TERMINATING),
    (S.PAUSED, S.RESUMING),
    (S.PAUSED, S.TERMINATING),
    (S.RESUMING, S.RUNNING),
    (S.RESUMING, S.PAUSED),
    (S.RESUMING, S.FAILED),
    (S.RESUMING, S.TERMINATING),
    (S.TERMINATING, S.TERMINATED),
    (S.TERMINATING, S.FAILED),
    (S.FAILED, S.TERMINATING),
}
ALL_PAIRS = set(itertools.product(State, State))


def test_state_values_are_the_wire_names() -> None:
    assert [s.value for s in State] == [
        "starting",
        "running",
        "pausing",
        "paused",
        "resuming",
        "terminating",
        "terminated",
        "failed",
    ]


def test_table_covers_every_state() -> None:
    assert set(TRANSITIONS) == set(State)


def test_table_is_exactly_the_documented_one() -> None:
    actual = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert actual == ALLOWED


@pytest.mark.parametrize(("current", "target"), sorted(ALLOWED))
def test_allowed_transitions(current: State, target: State) -> None:
    assert can(current, target)
    assert check(current, target) is target


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.STARTING, S.PAUSED),
        (S.STARTING, S.TERMINATED),
        (S.RUNNING, S.PAUSED),  # must pass through pausing
        (S.RUNNING, S.TERMINATED),  # must pass through terminating
        (S.RUNNING, S.FAILED),
        (S.RUNNING, S.STARTING),
        (S.PAUSED, S.RUNNING),  # must pass through resuming
        (S.PAUSED, S.FAILED),
        (S.PAUSED, S.PAUSING),
        (S.TERMINATING, S.RUNNING),
        (S.FAILED, S.RUNNING),
        (S.FAILED, S.TERMINATED),
    ],
)
def test_sample_of_forbidden_transitions(current: State, target: State) -> None:
    assert not can(current, target)
    with pytest.raises(InvalidTransition) as info:
        check(current, target)
    assert info.value.current is current
    assert info.value.target is target
    assert current.value in str(info.value)
    assert target.value in str(info.value)


@pytest.mark.parametrize(("current", "target"), sorted(ALL_PAIRS - ALLOWED))
def test_every_pair_outside_the_table_is_refused(current: State, target: State) -> None:
    assert not can(current, target)


@pytest.mark.parametrize("state", list(State))
def test_no_self_transitions(state: State) -> None:
    assert not can(state, state)


@pytest.mark.parametrize("target", list(State))
def test_terminated_is_final(target: State) -> None:
    assert TRANSITIONS[S.TERMINATED] == frozenset()
    with pytest.raises(InvalidTransition):
        check(S.TERMINATED, target)


@pytest.mark.parametrize("state", [S.STARTING, S.PAUSING, S.RESUMING, S.TERMINATING])
def test_failed_reachable_from_every_transitional_state(state: State) -> None:
    assert can(state, S.FAILED)


@pytest.mark.parametrize("state", [s for s in State if s is not S.TERMINATED])
def test_terminated_reachable_from_every_other_state(state: State) -> None:
    # Following the table, every sandbox can be torn down.
    seen, frontier = {state}, [state]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    assert S.TERMINATED in seen


def test_live_states() -> None:
    assert frozenset({S.STARTING, S.RUNNING, S.PAUSING, S.PAUSED, S.RESUMING}) == LIVE


@pytest.mark.parametrize(
    ("state", "status"),
    [
        (S.STARTING, "running"),
        (S.RUNNING, "running"),
        (S.RESUMING, "running"),
        (S.PAUSING, "paused"),
        (S.PAUSED, "paused"),
        (S.TERMINATING, "terminated"),
        (S.TERMINATED, "terminated"),
        (S.FAILED, "terminated"),
    ],
)
def test_sdk_status_folding(state: State, status: str) -> None:
    assert sdk_status(state) == status


def test_sdk_status_only_three_values() -> None:
    assert {sdk_status(s) for s in State} == {"running", "paused", "terminated"}
