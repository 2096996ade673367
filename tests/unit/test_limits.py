from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.limits import (
    QUOTA_WINDOW,
    AccountBudget,
    Caps,
    ProviderLimits,
    next_release,
    rolling_count,
)

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def test_rolling_window_edges() -> None:
    times = [
        NOW - QUOTA_WINDOW,  # exactly 30 days ago: already out
        NOW - QUOTA_WINDOW + timedelta(microseconds=1),  # just inside
        NOW,
        NOW + timedelta(seconds=1),  # future: not counted yet
    ]
    assert rolling_count(times, NOW) == 2


def test_next_release_is_when_the_oldest_unit_leaves() -> None:
    oldest = NOW - timedelta(days=29)
    assert next_release([oldest, NOW], NOW) == oldest + QUOTA_WINDOW
    assert next_release([], NOW) is None


def test_caps_and_reserve() -> None:
    b = AccountBudget(caps=Caps(concurrency=2, monthly_quota=10, reserve=3), used=6)
    assert b.free_slots() == 2
    assert b.free_quota() == 1
    b.on_reserve()
    assert b.free_quota() == 0
    assert not b.can_submit()
    assert b.blocked_by() == "quota"


def test_provider_view_is_extrapolated_between_refreshes() -> None:
    b = AccountBudget(caps=Caps())
    b.on_refresh(
        ProviderLimits(
            concurrent_limit=3, monthly_quota=100, available_concurrent=1, available_quota=50
        ),
        in_flight=2,
        used=50,
    )
    assert b.free_slots() == 1
    b.on_reserve()
    assert b.free_slots() == 0 and b.blocked_by() == "concurrency"
    b.on_slot_released()
    assert b.free_slots() == 1
    assert b.free_quota() == 49


def test_provider_full_blocks_until_refresh() -> None:
    b = AccountBudget(caps=Caps(concurrency=5))
    b.on_provider_full()
    assert not b.can_submit()


def test_unlimited_without_caps_or_report() -> None:
    b = AccountBudget(caps=Caps())
    assert b.free_slots() is None and b.free_quota() is None and b.can_submit()


@given(
    ops=st.lists(st.sampled_from(["reserve", "unreserve", "release"]), max_size=200),
    conc=st.integers(1, 5),
    quota=st.integers(0, 20),
)
def test_admission_never_exceeds_caps(ops: list[str], conc: int, quota: int) -> None:
    b = AccountBudget(caps=Caps(concurrency=conc, monthly_quota=quota))
    for op in ops:
        if op == "reserve" and b.can_submit():
            b.on_reserve()
        elif op == "unreserve" and b.in_flight > 0:
            b.on_unreserve()
        elif op == "release" and b.in_flight > 0:
            b.on_slot_released()
        assert b.in_flight <= conc
        assert b.used <= quota


def test_sliding_window_never_admits_more_than_rate_in_any_second() -> None:
    from orchestrator.limits import SlidingWindowLimiter

    now = [0.0]
    lim = SlidingWindowLimiter(3, clock=lambda: now[0])
    sent = []
    for t in (0.0, 0.1, 0.2, 0.3, 0.5, 1.05, 1.15, 1.2):
        now[0] = max([t, *sent])  # callers queue: time moves on while one waits
        while (wait := lim.wait_time(now[0])) > 0:
            now[0] += wait
        lim._pending += 1
        lim.release()  # answered at once
        sent.append(now[0])
    for s in sent:
        assert sum(1 for x in sent if s <= x < s + 1.0) <= 3
    assert sent[3] == 1.02  # the fourth waits until the first leaves the (1.02 s) window


def test_a_request_still_unanswered_holds_its_place_in_the_window() -> None:
    """Under CPU load a request counted at acquire() can leave the machine much later; until it
    is answered it occupies the window, and it is counted from its answer on. Stamped at
    acquire() alone, a 1-second window at the server held 23 requests at 20/s."""
    from orchestrator.limits import SlidingWindowLimiter

    now = [0.0]
    lim = SlidingWindowLimiter(2, clock=lambda: now[0])
    assert lim.wait_time(0.0) == 0
    lim._pending += 2  # two requests acquired at 0.0, not answered yet
    now[0] = 5.0
    assert lim.wait_time(5.0) == float("inf")  # no room until one is answered
    lim.release()  # the first answered at 5.0 (the server saw it somewhere in 0.0..5.0)
    assert lim.wait_time(5.5) == 5.0 + lim.period - 5.5
    assert lim.wait_time(5.0 + lim.period) == 0


async def test_sliding_window_acquire_keeps_the_window_and_the_order_of_arrival() -> None:
    """The lock-free fast path only serves a caller when nobody is queued: later arrivals never
    overtake a waiting one, and no window ever holds more than the rate."""
    import asyncio
    import time

    from orchestrator.limits import SlidingWindowLimiter

    lim = SlidingWindowLimiter(4, period=0.05)
    served: list[int] = []
    stamps: list[float] = []

    async def caller(i: int) -> None:
        await lim.acquire()
        served.append(i)
        stamps.append(time.monotonic())
        await asyncio.sleep(0.001)  # the request's round trip
        lim.release()

    first = [asyncio.create_task(caller(i)) for i in range(10)]
    await asyncio.sleep(0)  # the first four took the fast path; six are queued
    late = [asyncio.create_task(caller(i)) for i in range(10, 14)]
    await asyncio.gather(*first, *late)
    assert served == list(range(14))
    for s in stamps:
        assert sum(1 for x in stamps if s <= x < s + 0.05) <= 4
