import itertools
import random

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.backoff import (
    PollPolicy,
    RetryPolicy,
    next_poll_delay,
    poll_points,
    quantile,
    retry_delay,
)

POLICY = PollPolicy(initial=2.0, factor=1.5, max_interval=60.0, min_interval=0.1, jitter=0.1)


def test_without_history_the_interval_grows_to_the_cap() -> None:
    delays = [next_poll_delay(POLICY, elapsed=0, polls_done=n) for n in range(20)]
    assert delays[0] == 2.0
    assert delays[1] == 3.0
    assert all(a <= b for a, b in itertools.pairwise(delays))
    assert delays[-1] == 60.0


def test_with_history_the_next_poll_lands_on_the_next_quantile() -> None:
    points = poll_points([100.0] * 3 + [110.0, 120.0, 130.0, 140.0])
    assert points[0] == 100.0
    # A job 5 s old is not polled blindly: the first poll waits until the fastest past run ended.
    assert next_poll_delay(POLICY, elapsed=5.0, polls_done=0, points=points) == 60.0
    assert next_poll_delay(POLICY, elapsed=95.0, polls_done=1, points=points) == 5.0
    # Past every quantile it backs off relative to the job's age.
    assert next_poll_delay(POLICY, elapsed=200.0, polls_done=9, points=points) == 60.0


def test_too_little_history_is_ignored() -> None:
    assert poll_points([1.0, 2.0]) == []


def test_quantile_interpolates() -> None:
    assert quantile([0.0, 10.0], 0.5) == 5.0
    assert quantile([3.0], 0.9) == 3.0


@given(
    elapsed=st.floats(0, 1e6),
    polls=st.integers(0, 100),
    history=st.lists(st.floats(0.01, 1e5), max_size=40),
    seed=st.integers(0, 2**32),
)
def test_delay_always_within_bounds(
    elapsed: float, polls: int, history: list[float], seed: int
) -> None:
    d = next_poll_delay(
        POLICY,
        elapsed=elapsed,
        polls_done=polls,
        points=poll_points(history),
        rng=random.Random(seed),
    )
    assert POLICY.min_interval <= d <= POLICY.max_interval * (1 + POLICY.jitter)


@given(attempt=st.integers(1, 50), seed=st.integers(0, 2**32))
def test_retry_delay_is_capped_and_jittered(attempt: int, seed: int) -> None:
    policy = RetryPolicy(base=2.0, cap=300.0)
    ceiling = retry_delay(policy, attempt)
    assert ceiling == min(300.0, 2.0 * 2 ** (attempt - 1))
    jittered = retry_delay(policy, attempt, random.Random(seed))
    assert ceiling / 2 <= jittered <= ceiling
