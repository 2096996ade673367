import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.backoff import (
    PollPolicy,
    RetryPolicy,
    next_poll_delay,
    optimal_points,
    poll_points,
    quantile,
    retry_delay,
    schedule_cost,
    survival_from_history,
)

POLICY = PollPolicy(initial=2.0, factor=1.5, max_interval=60.0, min_interval=0.1, jitter=0.1)


def test_without_history_waits_grow_with_the_jobs_age() -> None:
    assert next_poll_delay(POLICY, elapsed=0, polls_done=0) == 2.0
    assert next_poll_delay(POLICY, elapsed=4.0, polls_done=2) == 2.0
    assert next_poll_delay(POLICY, elapsed=100.0, polls_done=9) == 50.0  # (factor - 1) x age
    assert next_poll_delay(POLICY, elapsed=1000.0, polls_done=20) == 60.0  # capped


def test_learned_points_wait_for_the_fast_runs_and_cover_the_range() -> None:
    history = [100.0 + i for i in range(50)]
    points = poll_points(history)
    assert 90.0 < points[0] < 110.0  # around the fastest past runs, never blindly early
    assert points[-1] >= 149.0  # the slowest past run is covered
    assert all(a < b for a, b in itertools.pairwise(points))
    # A young job waits for the first point.
    assert next_poll_delay(POLICY, elapsed=5.0, polls_done=0, points=points) == 60.0  # capped
    first = next_poll_delay(POLICY, elapsed=points[0] - 5, polls_done=1, points=points)
    assert first == pytest.approx(5.0)
    # Past every point it backs off relative to the job's age.
    assert next_poll_delay(POLICY, elapsed=points[-1] + 1, polls_done=9, points=points) == 60.0


def test_gaps_are_narrow_where_running_jobs_are_likely_to_end() -> None:
    # Runs end near 100 s or near 400 s, never in between.
    history = [100.0 + i * 0.2 for i in range(50)] + [400.0 + i * 0.8 for i in range(50)]
    points = poll_points(history)
    gaps = [b - a for a, b in itertools.pairwise(points)]
    near = [g for a, g in zip(points, gaps, strict=False) if 100 <= a <= 108]
    between = [g for a, g in zip(points, gaps, strict=False) if 150 <= a <= 330]
    assert near and between
    assert max(near) * 4 < min(between)  # dense where runs end, sparse where none do


def test_more_weight_on_lag_polls_more_often() -> None:
    history = [60.0 * (1 + (i % 7) / 3) for i in range(40)]
    assert len(poll_points(history, lag_weight=1000)) > len(poll_points(history, lag_weight=100))


@settings(max_examples=60, deadline=None)
@given(
    history=st.lists(st.floats(1.0, 1e4), min_size=5, max_size=30),
    lag_cost=st.floats(0.01, 10.0),
    interval=st.integers(1, 40),
)
def test_optimal_schedule_beats_any_fixed_interval(
    history: list[float], lag_cost: float, interval: int
) -> None:
    """On the same survival curve, the dynamic programme's schedule costs no more than polling
    every `interval` grid steps (which it could have chosen)."""
    survival = survival_from_history(history)
    end = max(history) * 3
    ages = [end * k / 120 for k in range(121)]
    surv = [survival(t) for t in ages]
    best = optimal_points(ages, surv, lag_cost, max_gap=math.inf)
    fixed = [*range(interval, 120, interval), 120]
    assert best[-1] == 120
    assert schedule_cost(ages, surv, best, lag_cost) <= schedule_cost(
        ages, surv, fixed, lag_cost
    ) * (1 + 1e-9)


def test_survival_is_a_smoothed_distribution() -> None:
    survival = survival_from_history([10.0, 20.0, 30.0, 40.0, 50.0])
    values = [survival(t) for t in (0, 5, 10, 30, 50, 100, 1000)]
    assert values[0] == 1.0
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert 0.4 < survival(30.0) < 0.6
    assert survival(1000.0) < 1e-3


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
