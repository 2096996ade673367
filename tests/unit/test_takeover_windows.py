"""Which rate windows a replica taking an account over waits out (AccountPace.binding_periods):
every one-second window; a per-minute window only where the per-second pace could fill it.
Waiting out a minute window that cannot overflow stalled every takeover of such an account for
a minute (the replica chaos test: Claro and Clayva paused 60 s after each kill)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.leasing import settle_pause
from orchestrator.limits import AccountPace, SlidingWindowLimiter


def max_in_any_window(times: list[float], period: float) -> int:
    """Most of `times` (ascending) in any half-open window [t, t + period)."""
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= period:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def test_a_minute_cap_the_second_pace_cannot_reach_is_not_waited_out() -> None:
    pace = AccountPace()
    pace.windows("api", 10, 6_000)
    second = SlidingWindowLimiter(10).period
    assert pace.binding_periods() == [second]
    assert settle_pause(pace.binding_periods(), 0.0) == second


def test_a_minute_cap_the_second_pace_can_reach_is_waited_out() -> None:
    pace = AccountPace()
    pace.windows("api", 10, 100)  # Claro's default: 100 a minute, 10 a second
    pace.windows("downloads", 10, None)
    minute = SlidingWindowLimiter(100 / 60, period=60.0).period
    assert sorted(pace.binding_periods()) == sorted(pace.window_periods())
    assert max(pace.binding_periods()) == minute


@given(st.integers(1, 50), st.integers(1, 10_000))
def test_an_unwaited_minute_window_holds_whatever_both_owners_send(
    per_second: int, per_minute: int
) -> None:
    """The densest traffic the rules allow: each owner sends its full one-second capacity
    every period, and the new one starts a whole period after the old one stopped (the
    pause). If the minute window is not waited out, no minute window of it can overflow."""
    pace = AccountPace()
    second, minute = pace.windows("api", per_second, per_minute)
    assert minute is not None
    if minute.period in pace.binding_periods():
        return
    old = [k * second.period for k in range(120)]
    gap = old[-1] + second.period
    new = [gap + k * second.period for k in range(120)]
    times = sorted(t for burst in (*old, *new) for t in [burst] * second.capacity)
    assert max_in_any_window(times, minute.period) <= minute.capacity
