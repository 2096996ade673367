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


def test_without_history_waits_grow_with_the_jobs_age() -> None:
    assert next_poll_delay(POLICY, elapsed=0, polls_done=0) == 2.0
    assert next_poll_delay(POLICY, elapsed=4.0, polls_done=2) == 2.0
    assert next_poll_delay(POLICY, elapsed=100.0, polls_done=9) == 50.0  # (factor - 1) x age
    assert next_poll_delay(POLICY, elapsed=1000.0, polls_done=20) == 60.0  # capped


def test_learned_points_start_at_the_fastest_past_run_and_cover_the_range() -> None:
    history = [100.0 + i for i in range(50)]
    points = poll_points(history)
    assert points[0] == 100.0 and points[-1] == 149.0
    assert all(a < b for a, b in itertools.pairwise(points))
    # A young job waits for the first point; it is never polled blindly early.
    assert next_poll_delay(POLICY, elapsed=5.0, polls_done=0, points=points) == 60.0  # capped
    assert next_poll_delay(POLICY, elapsed=95.0, polls_done=1, points=points) == 5.0
    # Past every point it backs off relative to the job's age.
    assert next_poll_delay(POLICY, elapsed=200.0, polls_done=9, points=points) == 60.0


def test_gaps_are_narrow_where_running_jobs_are_likely_to_end() -> None:
    # Most runs end near 100 s; a few take up to 1,000 s.
    history = [100.0 + i * 0.1 for i in range(95)] + [200.0 * (i + 1) for i in range(5)]
    points = poll_points(history)
    gaps = [b - a for a, b in itertools.pairwise(points)]
    near = [g for a, g in zip(points, gaps, strict=False) if a < 110]
    far = [g for a, g in zip(points, gaps, strict=False) if a > 300]
    assert max(near) < min(far)


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
