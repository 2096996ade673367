"""Lease rounds on the ledger (orchestrator.ledger.leases, engine/ownership.py), on SQLite and
PostgreSQL: a round tells when the next lease of another replica expires, and the replica's
next round is set no later than right after that — a dead replica's accounts are looked at
when they become free, not up to a heartbeat later (which made takeovers exceed the lease)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from orchestrator.config import load_config
from orchestrator.engine.context import Context
from orchestrator.engine.ownership import EXPIRY_MARGIN, Hooks, Ownership
from orchestrator.leasing import LeaseTimes
from orchestrator.ledger import leases, migrate
from orchestrator.ledger.leases import Replica
from orchestrator.ledger.store import Ledger
from tests.conftest import BOTH_LEDGERS, write_config

ACCOUNTS = ["a", "b", "c", "d"]
TTL = 30.0  # long: nothing expires by itself during a test


@pytest.fixture
async def ledger(ledger_url: str) -> AsyncIterator[Ledger]:
    lg = Ledger(ledger_url)
    await migrate.upgrade(lg)
    await lg.start()
    yield lg
    await lg.close()


def replica(n: int) -> Replica:
    return Replica(id=f"host-{n}", host="host", pid=n, version="test")


async def beat(lg: Ledger, me: Replica, live_accounts: list[str] = ACCOUNTS) -> leases.Round:
    return await lg.run_write(
        functools.partial(leases.heartbeat, me=me, accounts=live_accounts, ttl=TTL)
    )


@BOTH_LEDGERS
async def test_a_round_says_when_another_replicas_lease_expires(ledger: Ledger) -> None:
    one, two = replica(1), replica(2)
    await ledger.run_write(functools.partial(leases.register, me=one))
    first = await beat(ledger, one)
    assert first.held == set(ACCOUNTS)  # alone: every account
    assert first.next_expiry is None  # nobody else holds a lease
    await ledger.run_write(functools.partial(leases.register, me=two))
    second = await beat(ledger, two)
    assert second.held == set() and second.taken == ()  # all held, none expired
    assert second.next_expiry is not None and 0 < second.next_expiry <= TTL
    # Its own leases do not count: the first replica learns of none but its own.
    again = await beat(ledger, one)
    assert again.held == set(ACCOUNTS) and again.next_expiry is None


@BOTH_LEDGERS
async def test_the_next_round_comes_right_after_that_expiry(ledger: Ledger, tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, "http://127.0.0.1:9/clari/v4", []))
    other = replica(3)
    await ledger.run_write(functools.partial(leases.register, me=other))
    await beat(ledger, other, ["clari"])  # another replica holds the one account, for TTL

    async def acquired(account: str, since: float | None) -> None:
        raise AssertionError("nothing should be taken")

    async def lost(account: str) -> None:
        raise AssertionError("nothing was held")

    ctx = Context.build(cfg, ledger, connect=False)
    times = LeaseTimes(3.0)  # heartbeat 0.6 s, far shorter than the other's TTL
    own = Ownership(
        ctx,
        ledger,
        ["clari"],
        times,
        Hooks(acquired=acquired, lost=lost, busy=lambda a: 0, idle=lambda a: None),
        exclusive=False,
    )
    await own.start()
    assert own.held == set()
    # Far expiry: the heartbeat's cadence.
    cadence = own._next_round
    # A near one: the next round is set right after it, before the heartbeat would come.
    own._look_again(0.1)
    assert own._next_round < cadence
    own._look_again(None)
    own._look_again(times.heartbeat * 10)
    assert own._next_round < cadence  # a later expiry never postpones a round
    assert EXPIRY_MARGIN < times.heartbeat
