"""Pure poll and retry schedules. No I/O, no clocks: callers pass elapsed times and an RNG."""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

MIN_HISTORY = 5
MAX_POINTS = 400
SEGMENTS = 20  # the duration distribution is read as 20 equal-probability segments
SPACING = 1.0  # kappa: gap = kappa * 1/sqrt(hazard); smaller polls more and detects sooner


@dataclass(frozen=True, kw_only=True, slots=True)
class PollPolicy:
    initial: float = 2.0  # first poll after this many seconds when there is no history
    factor: float = 1.25  # past the learned range (or without history): wait (factor-1) x age
    max_interval: float = 60.0  # never wait longer than this between two polls
    min_interval: float = 0.05  # never poll more often than this
    jitter: float = 0.1  # +/- fraction applied to every delay


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    base: float = 2.0
    cap: float = 300.0


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of an already sorted, non-empty sequence."""
    if not sorted_values:
        raise ValueError("quantile of an empty sequence")
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return sorted_values[lo] * (1 - frac) + sorted_values[hi] * frac


def poll_points(history: Sequence[float], kappa: float = SPACING) -> list[float]:
    """Ages (s) at which to poll a job, learned from its pipeline's past durations; empty when
    the history is too short to trust.

    Polls per job count only the polls until the job ends, so the spacing that gives the least
    mean detection lag for a number of polls grows as 1/sqrt(hazard), hazard = density of ending
    now / share still running: close together where running jobs are likely to end, wide where
    they are not, and no poll before the fastest past run ended. (A fixed interval is the optimum
    only for a constant hazard.) `kappa` trades polls for lag."""
    if len(history) < MIN_HISTORY:
        return []
    ordered = sorted(history)
    edges = [quantile(ordered, k / SEGMENTS) for k in range(SEGMENTS + 1)]
    points = [edges[0]]
    floor = max((edges[-1] - edges[0]) / MAX_POINTS, 1e-3)  # bounded work and memory
    for k, (a, b) in enumerate(itertools.pairwise(edges)):
        survival = 1 - (k + 0.5) / SEGMENTS
        gap = max(floor, kappa * math.sqrt(max(0.0, b - a) * survival * SEGMENTS))
        while points[-1] + gap < b:
            points.append(points[-1] + gap)
    points.append(edges[-1])
    return sorted(set(points))


def next_poll_delay(
    policy: PollPolicy,
    *,
    elapsed: float,
    polls_done: int,
    points: Sequence[float] = (),
    rng: random.Random | None = None,
) -> float:
    """Seconds from now until the next status poll of a job that has run for `elapsed` seconds.

    With history (`poll_points`) poll at the learned ages; past them, or without history, wait
    `initial`, then a fraction (factor - 1) of the job's age, so the lag stays relative to the
    job's length.
    """
    i = bisect.bisect_right(points, elapsed + policy.min_interval)
    learned = i < len(points)
    if learned:
        delay = points[i] - elapsed
    else:
        delay = max(policy.initial, elapsed * (policy.factor - 1))
    delay = _clamp(delay, policy.min_interval, policy.max_interval)
    if rng is not None and policy.jitter and not learned:
        # Learned points are exact: jitter could land just short of one and poll it twice.
        delay *= 1 + rng.uniform(-policy.jitter, policy.jitter)
    return max(policy.min_interval, delay)


def retry_delay(policy: RetryPolicy, attempt: int, rng: random.Random | None = None) -> float:
    """Capped exponential backoff with 'equal jitter' for attempt 1, 2, 3, ..."""
    ceiling = _clamp(policy.base * 2 ** max(0, attempt - 1), 0.0, policy.cap)
    if rng is None:
        return ceiling
    return ceiling / 2 + rng.uniform(0, ceiling / 2)
