from datetime import UTC, datetime, timedelta

from hypothesis import example, given, settings
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
    b.on_reserve(1)
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
    b.on_reserve(7)
    b.on_answered(7)
    assert b.free_slots() == 0 and b.blocked_by() == "concurrency"
    b.on_slot_released(7)
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
    held: list[int] = []
    for n, op in enumerate(ops):
        if op == "reserve" and b.can_submit():
            b.on_reserve(n)
            held.append(n)
        elif op == "unreserve" and held:
            b.on_unreserve(held.pop())
        elif op == "release" and held:
            b.on_slot_released(held.pop(0))
        assert b.in_flight <= conc
        assert b.used <= quota


LIMITS = ProviderLimits(
    concurrent_limit=3, monthly_quota=100, available_concurrent=3, available_quota=100
)


def _limits(available: int) -> ProviderLimits:
    return ProviderLimits(
        concurrent_limit=3, monthly_quota=100, available_concurrent=available, available_quota=90
    )


def test_a_job_that_ended_before_the_snapshot_frees_nothing() -> None:
    """The restart case: three jobs RUNNING in the ledger ended while the daemon was down; the
    snapshot already shows their slots free, so their DONE, seen by the first poll, must not
    count them free a second time (it used to: 6 free slots of 3)."""
    b = AccountBudget(caps=Caps())
    b.on_refresh(_limits(3), in_flight=3, used=3, now=10.0)
    for job_id in (1, 2, 3):
        b.on_slot_released(job_id)
    assert b.free_slots() == 3


def test_a_job_seen_running_after_the_snapshot_frees_its_slot() -> None:
    b = AccountBudget(caps=Caps())
    b.on_refresh(_limits(1), in_flight=2, used=2, now=10.0)
    b.on_seen_active(1, sent_at=9.0)  # a poll sent before the snapshot: proves nothing
    b.on_seen_active(2, sent_at=10.5)
    b.on_slot_released(1)
    assert b.free_slots() == 1
    b.on_slot_released(2)
    assert b.free_slots() == 2


def test_a_submission_answered_before_the_refresh_is_in_the_snapshot() -> None:
    b = AccountBudget(caps=Caps())
    b.on_refresh(_limits(3), in_flight=0, used=0, now=1.0)
    b.on_reserve(1)
    b.on_answered(1)
    b.on_reserve(2)  # still in the air when the limits request leaves
    token = b.snapshot_token()
    b.on_answered(2)
    b.on_reserve(3)  # reserved while the limits request is out
    b.on_refresh(_limits(1), in_flight=3, used=3, token=token, now=2.0)  # saw 1 and 2
    assert b.since_submitted == 2  # 2 and 3 counted again: doubt means fewer free slots
    assert b.free_slots() == 0
    b.on_slot_released(1)  # in the snapshot, not seen since: unknown when it ended
    assert b.free_slots() == 0
    b.on_slot_released(3)
    assert b.free_slots() == 0  # 1 - 2 + 1: job 3 was never in the snapshot
    b.on_slot_released(2)
    assert b.free_slots() == 1


def test_unreserve_of_a_job_the_snapshot_holds_is_not_subtracted_twice() -> None:
    b = AccountBudget(caps=Caps())
    b.on_refresh(_limits(2), in_flight=1, used=1, now=1.0)
    b.on_unreserve(99)  # recovery: a job of a previous process provably created nothing
    assert b.free_slots() == 2
    b.on_reserve(5)
    b.on_unreserve(99)
    assert b.free_slots() == 1


@given(
    events=st.lists(
        st.tuples(
            st.sampled_from(
                ["reserve", "answer", "lose", "adopt", "poll", "refresh", "end", "refuse"]
            ),
            st.integers(0, 5),
        ),
        max_size=120,
    ),
    limit=st.integers(1, 4),
)
@example(  # the restart case: a job ended before the snapshot, its DONE seen after it
    events=[
        ("reserve", 0),
        ("answer", 0),
        ("end", 0),
        ("refresh", 0),
        ("poll", 0),
        ("reserve", 0),
        ("reserve", 0),
        ("answer", 0),
        ("answer", 1),
    ],
    limit=1,
)
@settings(max_examples=400)
def test_never_more_remote_jobs_than_the_limit(events: list[tuple[str, int]], limit: int) -> None:
    """A model provider (jobs occupy a slot from creation to end) against the budget, with
    snapshots and polls interleaved arbitrarily: every submission the budget admits fits."""
    clock = [0.0]
    remote: set[int] = set()  # jobs occupying a slot at the provider
    ours: dict[int, str] = {}  # job -> "air" (request out) | "live" | "ended"
    b = AccountBudget(caps=Caps())

    def snap() -> ProviderLimits:
        return ProviderLimits(
            concurrent_limit=limit,
            monthly_quota=1000,
            available_concurrent=limit - len(remote),
            available_quota=1000,
        )

    b.on_refresh(snap(), in_flight=0, used=0, now=clock[0])
    next_id = 100
    for op, pick in events:
        clock[0] += 1.0
        live = sorted(j for j, s in ours.items() if s in ("air", "lost", "live"))
        target = live[pick % len(live)] if live else None
        if op == "reserve" and b.can_submit():
            next_id += 1
            b.on_reserve(next_id)
            ours[next_id] = "air"
        elif op == "answer" and target is not None and ours[target] == "air":
            assert len(remote) < limit, "the provider would refuse: limit exceeded"
            remote.add(target)
            ours[target] = "live"
            b.on_answered(target)
        elif op == "refuse" and target is not None and ours[target] == "air":
            del ours[target]
            b.on_unreserve(target)
        elif op == "lose" and target is not None and ours[target] == "air":
            assert len(remote) < limit, "the provider would refuse: limit exceeded"
            remote.add(target)  # created, answer lost: in the air until reconciled
            ours[target] = "lost"
        elif op == "adopt" and target is not None and ours[target] == "lost":
            ours[target] = "live"  # reconciliation found it
            b.on_answered(target)
        elif op == "poll" and target is not None and ours[target] == "live" and target in remote:
            b.on_seen_active(target, sent_at=clock[0])
        elif op == "end" and target is not None and ours[target] == "live" and target in remote:
            remote.discard(target)  # ends at the provider; the daemon learns it later
            ours[target] = "ended"
        elif op == "refresh":
            token = b.snapshot_token()
            b.on_refresh(snap(), in_flight=len(live), used=0, token=token, now=clock[0])
        for j, s in list(ours.items()):
            if s == "ended" and op == "poll":  # a poll shows the end: the slot is released
                b.on_slot_released(j)
                del ours[j]


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
