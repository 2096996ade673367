"""Pure poll and retry schedules. No I/O, no clocks: callers pass elapsed times and an RNG."""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass

# Where to poll relative to the distribution of this pipeline's past durations.
QUANTILES: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
MIN_HISTORY = 5


@dataclass(frozen=True, kw_only=True, slots=True)
class PollPolicy:
    initial: float = 2.0  # first poll after this many seconds when there is no history
    factor: float = 1.5  # growth of the interval without history
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


def poll_points(history: Sequence[float]) -> list[float]:
    """Elapsed times (s) worth polling at, from past durations; empty when history is too short."""
    if len(history) < MIN_HISTORY:
        return []
    ordered = sorted(history)
    return sorted({round(quantile(ordered, q), 6) for q in QUANTILES})


def next_poll_delay(
    policy: PollPolicy,
    *,
    elapsed: float,
    polls_done: int,
    points: Sequence[float] = (),
    rng: random.Random | None = None,
) -> float:
    """Seconds from now until the next status poll of a job that has run for `elapsed` seconds.

    With history (`points` from `poll_points`), poll at the next quantile of past durations, so
    most jobs are seen done soon after they finish without polling blindly early. Past every
    quantile, or without history, back off exponentially up to `max_interval`.
    """
    i = bisect.bisect_right(points, elapsed + policy.min_interval)
    if i < len(points):
        delay = points[i] - elapsed
    elif points:
        delay = max(elapsed, points[-1]) * (policy.factor - 1)
    else:
        delay = policy.initial * policy.factor**polls_done
    delay = _clamp(delay, policy.min_interval, policy.max_interval)
    if rng is not None and policy.jitter:
        delay *= 1 + rng.uniform(-policy.jitter, policy.jitter)
    return max(policy.min_interval, delay)


def retry_delay(policy: RetryPolicy, attempt: int, rng: random.Random | None = None) -> float:
    """Capped exponential backoff with 'equal jitter' for attempt 1, 2, 3, ..."""
    ceiling = _clamp(policy.base * 2 ** max(0, attempt - 1), 0.0, policy.cap)
    if rng is None:
        return ceiling
    return ceiling / 2 + rng.uniform(0, ceiling / 2)
