import itertools

import pytest

from orchestrator.domain import (
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    JobState,
    can_transition,
    check_transition,
)

ALLOWED = {
    ("PENDING", "SUBMITTING"),
    ("PENDING", "CANCELLED"),
    ("SUBMITTING", "RUNNING"),
    ("SUBMITTING", "PENDING"),
    ("SUBMITTING", "RETRY_WAIT"),
    ("SUBMITTING", "FAILED"),
    ("SUBMITTING", "CANCELLED"),
    ("RUNNING", "FETCHING"),
    ("RUNNING", "SUCCEEDED"),
    ("RUNNING", "RETRY_WAIT"),
    ("RUNNING", "FAILED"),
    ("RUNNING", "CANCELLED"),
    ("FETCHING", "SUCCEEDED"),
    ("FETCHING", "RETRY_WAIT"),
    ("FETCHING", "FAILED"),
    ("FETCHING", "CANCELLED"),
    ("RETRY_WAIT", "PENDING"),
    ("RETRY_WAIT", "CANCELLED"),
    ("RETRY_WAIT", "FAILED"),
}


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(JobState, JobState)))
def test_every_pair_is_allowed_exactly_when_listed(src: JobState, dst: JobState) -> None:
    expected = (src.value, dst.value) in ALLOWED
    assert can_transition(src, dst) is expected
    if expected:
        check_transition(1, src, dst)
    else:
        with pytest.raises(IllegalTransition, match=f"{src} -> {dst}"):
            check_transition(1, src, dst)


def test_terminal_states_have_no_way_out() -> None:
    for state in TERMINAL:
        assert TRANSITIONS[state] == frozenset()


def test_every_state_reaches_a_terminal_state() -> None:
    for start in JobState:
        seen, todo = {start}, [start]
        while todo:
            for nxt in TRANSITIONS[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        assert seen & TERMINAL
