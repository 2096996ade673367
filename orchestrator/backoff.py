"""Pure poll and retry schedules. No I/O, no clocks: callers pass elapsed times and an RNG."""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

MIN_HISTORY = 5
HISTORY_RUNS = 50  # the poller learns a pipeline's schedule from this many recent runs
LAG_WEIGHT = 300.0  # one median duration of detection lag costs as much as 300 polls
GRID = 800  # ages the optimal schedule is chosen from (log-spaced)
MAX_GAP = 60.0  # seconds: no learned gap is longer (the poll policy's max_interval caps it too)


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


def kernel_bandwidth(xs: Sequence[float]) -> float:
    """Bandwidth of a Gaussian kernel density for the sample xs, chosen by leave-one-out
    likelihood among multiples of Silverman's rule: wide for one smooth bump, narrow when runs
    fall into separate clusters (a rule of thumb would blur clusters into one)."""
    n = len(xs)
    mean = sum(xs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / n)
    rule = max(1.06 * sd * math.pow(n, -0.2), 0.02)
    best, chosen = -math.inf, rule
    for factor in (1.4, 1.0, 0.7, 0.5, 0.35, 0.25):
        bw = max(rule * factor, 0.01)
        inv = 1 / (2 * bw * bw)
        score = 0.0
        for i, x in enumerate(xs):
            dens = sum(math.exp(-((x - y) ** 2) * inv) for j, y in enumerate(xs) if j != i)
            score += math.log(dens / bw + 1e-300)
        if score > best:
            best, chosen = score, bw
    return chosen


def survival_from_history(history: Sequence[float]) -> Callable[[float], float]:
    """P(a run lasts longer than t), smoothed from past durations: a Gaussian kernel density in
    log-time (durations are positive and skewed), so 50 runs give a curve without the steps an
    empirical distribution has (an optimiser would poll exactly at each past duration)."""
    logs = sorted(math.log(max(h, 1e-3)) for h in history)
    n = len(logs)
    bw = kernel_bandwidth(logs)
    scale = 1 / (bw * math.sqrt(2))

    def survival(t: float) -> float:
        if t <= 0:
            return 1.0
        lt = math.log(t)
        return sum(0.5 * math.erfc((lt - x) * scale) for x in logs) / n

    return survival


def schedule_cost(
    ages: Sequence[float], survival: Sequence[float], points_idx: Sequence[int], lag_cost: float
) -> float:
    """Expected polls + lag_cost x expected detection lag of polling at `ages[i]` for i in
    points_idx (increasing, ending at the last age), for runs whose survival is given on `ages`
    (survival[0] = 1). The objective `optimal_points` minimises; pure, for tests and benches."""
    partial = _partial_means(ages, survival)
    cost, prev = 0.0, 0
    for j in points_idx:
        cost += survival[prev] + lag_cost * _lag(ages, survival, partial, prev, j)
        prev = j
    return cost


def _partial_means(ages: Sequence[float], survival: Sequence[float]) -> list[float]:
    """m[i] = E[duration; duration <= ages[i]] (midpoint rule)."""
    m = [0.0]
    for i in range(1, len(ages)):
        m.append(m[-1] + (survival[i - 1] - survival[i]) * (ages[i] + ages[i - 1]) / 2)
    return m


def _lag(
    ages: Sequence[float], survival: Sequence[float], partial: Sequence[float], i: int, j: int
) -> float:
    """Expected lag contributed by runs ending in (ages[i], ages[j]], detected at ages[j]."""
    return ages[j] * (survival[i] - survival[j]) - (partial[j] - partial[i])


def optimal_points(
    ages: Sequence[float], survival: Sequence[float], lag_cost: float, max_gap: float = MAX_GAP
) -> list[int]:
    """Indices into `ages` of the poll schedule with the least expected polls + lag_cost x lag
    (dynamic programming over "last poll at ages[i], still running"). Gaps are at most max_gap
    seconds (or one step of `ages`), except the first poll, which may wait as long as it pays."""
    n = len(ages) - 1
    partial = _partial_means(ages, survival)
    best = [0.0] * (n + 1)
    nxt = [n] * (n + 1)
    for i in range(n - 1, -1, -1):
        s_i, m_i, a_i = survival[i], partial[i], ages[i]
        if s_i <= 1e-12:
            continue  # no run is still going here: nothing to decide
        cost, choice = math.inf, n
        for j in range(i + 1, n + 1):
            if i and ages[j] - a_i > max_gap and j > i + 1:
                break
            c = lag_cost * (ages[j] * (s_i - survival[j]) - (partial[j] - m_i)) + best[j]
            if c < cost:
                cost, choice = c, j
        best[i] = s_i + cost
        nxt[i] = choice
    out, i = [], 0
    while i < n:
        i = nxt[i]
        out.append(i)
    return out


def log_ages(start: float, end: float, n: int = GRID) -> list[float]:
    """0, then n log-spaced ages from start to end: fine where young runs end, coarse in the
    long tail, whatever the spread of durations."""
    ratio = (end / start) ** (1 / (n - 1))
    return [0.0, *(start * ratio**k for k in range(n))]


def poll_points(
    history: Sequence[float], lag_weight: float = LAG_WEIGHT, max_gap: float = MAX_GAP
) -> list[float]:
    """Ages (s) at which to poll a job, learned from its pipeline's past durations; empty when
    the history is too short to trust.

    The schedule minimises expected polls + (lag_weight / median duration) x expected detection
    lag over the smoothed duration distribution, so the trade-off is relative to the jobs'
    length. Polls come close together where running jobs are likely to end and wide where they
    are not, and not before the fastest runs end. A fixed interval is optimal only when the
    hazard is constant; here it needs ~1.4x the polls at the same mean lag (`make bench`)."""
    if len(history) < MIN_HISTORY:
        return []
    survival = survival_from_history(history)
    ordered = sorted(history)
    top = max(ordered[-1], 1e-3)
    end = top * 1.5
    while survival(end) > 1e-4 and end < top * 100:
        end *= 1.5
    ages = log_ages(max(ordered[0], 1e-3) / 4, end)
    surv = [survival(t) for t in ages]
    median = max(quantile(ordered, 0.5), 1e-3)
    idx = optimal_points(ages, surv, lag_weight / median, max_gap)
    return [ages[i] for i in idx]


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
