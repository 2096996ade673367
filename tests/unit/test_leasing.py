"""The lease rules (orchestrator.leasing): every account held when each live replica takes its
fair share; a replica gives back only its surplus; a new owner waits out the old one's window."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.leasing import LeaseTimes, fair_share, plan, settle_pause

names = st.lists(st.text("abcdefgh-", min_size=1, max_size=6), unique=True, max_size=12)


def test_times_follow_from_the_lease() -> None:
    t = LeaseTimes(30.0)
    assert (t.heartbeat, t.ttl, t.fence) == (6.0, 24.0, 12.0)
    # A dead replica's lease expires `ttl` after its last renewal and is seen by the next
    # heartbeat of another: within the lease. It stopped calling long before (the fence).
    assert t.ttl + t.heartbeat == t.lease
    assert t.fence < t.ttl


@given(st.integers(0, 200), st.integers(0, 50))
def test_fair_shares_cover_every_account(accounts: int, live: int) -> None:
    share = fair_share(accounts, live)
    assert share * max(1, live) >= accounts
    if accounts:  # and no replica aims at more than one beyond an even split
        assert share - 1 < accounts / max(1, live)
    else:
        assert share == 0


@given(names, st.data(), st.integers(1, 8))
def test_plan_takes_up_to_the_share_and_gives_back_only_the_surplus(
    accounts: list[str], data: st.DataObject, live: int
) -> None:
    held = data.draw(st.lists(st.sampled_from(accounts), unique=True) if accounts else st.just([]))
    stray = ["not-configured"]  # a lease row of an account removed from the config
    p = plan(accounts, [*held, *stray], live)
    share = fair_share(len(accounts), live)
    assert set(p.give_back) <= set(held)
    assert p.take >= 0
    if len(held) <= share:
        assert p.give_back == () and p.take == share - len(held)
    else:
        assert p.take == 0 and len(held) - len(p.give_back) == share


def test_plan_gives_back_the_same_account_each_round() -> None:
    accounts = ["a", "b", "c"]
    first = plan(accounts, ["a", "b", "c"], 2)
    assert first.give_back == ("c",)
    assert plan(accounts, ["a", "b", "c"], 2) == first
    assert plan(accounts, ["a", "b"], 2).give_back == ()
    assert plan(accounts, [], 3).take == 1


@given(
    st.lists(st.floats(0.5, 120.0), max_size=4),
    st.none() | st.floats(-5.0, 500.0),
)
def test_settle_pause(periods: list[float], since: float | None) -> None:
    pause = settle_pause(periods, since)
    assert pause >= 0
    if since is None or not periods:
        assert pause == 0
    else:
        # The old owner's calls and ours are never in one window of any length the account has.
        assert pause + max(0.0, since) >= max(periods)
        assert pause <= max(periods)
