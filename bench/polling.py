"""Benchmark 3: status polls per job against detection lag, our poller vs a fixed interval.

A discrete simulation of the real schedule code (orchestrator.backoff) on lognormal job
durations (median 120 s): no clock, no HTTP, so the comparison is exact and repeatable. The
schedule learns from the same number of past runs the daemon reads (HISTORY_RUNS), and the
best any schedule of ages can do is computed beside it: the same optimiser given the true
distribution instead of 50 samples of it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from orchestrator.backoff import (
    HISTORY_RUNS,
    LAG_WEIGHT,
    PollPolicy,
    log_ages,
    next_poll_delay,
    optimal_points,
    poll_points,
)

MEDIAN, SIGMA = 120.0, 0.5
POLICY = PollPolicy()  # the defaults a pipeline gets


@dataclass(frozen=True)
class Outcome:
    polls: float  # mean status polls per job
    lag: float  # mean seconds from done to detected
    max_lag: float


def durations(n: int, seed: int, median: float = MEDIAN, sigma: float = SIGMA) -> list[float]:
    rng = random.Random(seed)
    return [median * math.exp(rng.gauss(0, sigma)) for _ in range(n)]


def ours(
    jobs: list[float],
    history: list[float],
    policy: PollPolicy = POLICY,
    points: list[float] | None = None,
) -> Outcome:
    points = poll_points(history) if points is None else points
    rng = random.Random(1)
    polls, lags = 0, []
    for d in jobs:
        t, n = 0.0, 0
        while True:
            t += next_poll_delay(policy, elapsed=t, polls_done=n, points=points, rng=rng)
            n += 1
            if t >= d:
                break
        polls += n
        lags.append(t - d)
    return Outcome(polls / len(jobs), sum(lags) / len(lags), max(lags))


def fixed(jobs: list[float], interval: float) -> Outcome:
    polls = [math.ceil(d / interval) for d in jobs]
    lags = [p * interval - d for p, d in zip(polls, jobs, strict=True)]
    return Outcome(sum(polls) / len(jobs), sum(lags) / len(lags), max(lags))


def fixed_at_lag(jobs: list[float], lag: float) -> tuple[float, Outcome]:
    """The fixed interval whose mean detection lag equals `lag` (bisection)."""
    lo, hi = 0.01, 10 * max(lag, 0.01) + 1
    for _ in range(60):
        mid = (lo + hi) / 2
        if fixed(jobs, mid).lag < lag:
            lo = mid
        else:
            hi = mid
    return lo, fixed(jobs, lo)


def lognormal_survival(t: float, median: float = MEDIAN, sigma: float = SIGMA) -> float:
    if t <= 0:
        return 1.0
    return 0.5 * math.erfc(math.log(t / median) / (sigma * math.sqrt(2)))


def optimum(jobs: list[float], sigma: float = SIGMA) -> Outcome:
    """The schedule of ages with the least polls + lag, knowing the true distribution."""
    ages = log_ages(MEDIAN / 20, MEDIAN * 20, 1600)
    surv = [lognormal_survival(t, sigma=sigma) for t in ages]
    idx = optimal_points(ages, surv, LAG_WEIGHT / MEDIAN)
    return ours(jobs, [], points=[ages[i] for i in idx])


def ratio(jobs: list[float], outcome: Outcome) -> float:
    return outcome.polls / fixed_at_lag(jobs, outcome.lag)[1].polls


def run() -> dict[str, object]:
    history, jobs = durations(HISTORY_RUNS, seed=1), durations(5000, seed=2)
    mine = ours(jobs, history)
    interval, theirs = fixed_at_lag(jobs, mine.lag)
    best = optimum(jobs)
    others = [ratio(jobs, ours(jobs, durations(HISTORY_RUNS, seed=s))) for s in range(3, 13)]
    short_hist = durations(HISTORY_RUNS, seed=3, median=10.0, sigma=0.2)
    short = ours([10.0] * 200, short_hist)
    cold = ours([10.0] * 200, [])
    curve = [(f.lag, f.polls) for f in (fixed(jobs, t) for t in (2, 4, 6, 8, 12, 16, 24, 32, 48))]
    return {
        "ours_polls_per_job": mine.polls,
        "ours_mean_lag_s": mine.lag,
        "fixed_interval_s": interval,
        "fixed_polls_per_job": theirs.polls,
        "ratio": mine.polls / theirs.polls,
        "optimum_ratio": ratio(jobs, best),
        "optimum_lag_s": best.lag,
        "ratio_other_histories": others,
        "ten_second_jobs_max_lag_s": short.max_lag,
        "ten_second_jobs_no_history_max_lag_s": cold.max_lag,
        "fixed_curve": curve,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
