"""Who does which provider account's work when several replicas share a ledger: the pure rules.

A replica may make an account's remote calls only while it holds the account's lease. Leases
are rows in the ledger (orchestrator.ledger.leases), renewed every `heartbeat`; one not renewed
for `ttl` may be taken by another replica, which then runs the same reconciliation as crash
recovery over the account's jobs. So all of an account's calls come from one process at a time
and its limiters (concurrency, quota, request rate) stay exact.

The times, from the one setting `lease` (the promise: a dead replica's work resumes elsewhere
within `lease`):

    heartbeat = lease / 5      how often a replica renews, and looks for work to take
    ttl       = lease - heartbeat    a lease's term from its last renewal; a replica that
                                     looks every heartbeat sees it expired within `lease`
    fence     = ttl / 2        a replica that could not renew for this long stops every remote
                               call of its accounts (it may have lost the database, and with it
                               the lease): well before anyone else may take the lease

Spreading: each live replica aims at `fair_share` accounts; one holding more gives back its
surplus (after its calls in flight have ended), one holding fewer takes expired or free ones.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

LEADER = "*leader"  # the lease of the one replica that sends notifications and prunes


@dataclass(frozen=True)
class LeaseTimes:
    lease: float

    @property
    def heartbeat(self) -> float:
        return self.lease / 5

    @property
    def ttl(self) -> float:
        return self.lease - self.heartbeat

    @property
    def fence(self) -> float:
        return self.ttl / 2


def fair_share(accounts: int, live_replicas: int) -> int:
    """How many accounts each of `live_replicas` should hold so that all are held."""
    if accounts <= 0:
        return 0
    return math.ceil(accounts / max(1, live_replicas))


@dataclass(frozen=True)
class Plan:
    take: int  # how many free or expired accounts to try to take
    give_back: tuple[str, ...]  # held accounts to release once their calls in flight end


def plan(accounts: Collection[str], held: Collection[str], live_replicas: int) -> Plan:
    """One replica's round: take up to its fair share; give back what is beyond it. `held` are
    this replica's accounts (of `accounts`); `live_replicas` counts this one."""
    share = fair_share(len(accounts), live_replicas)
    mine = sorted(a for a in held if a in accounts)
    if len(mine) < share:
        return Plan(take=share - len(mine), give_back=())
    # Give back the newest-named surplus: deterministic, so a replica does not hand back one
    # account this round and another the next.
    surplus = len(mine) - share
    return Plan(take=0, give_back=tuple(mine[len(mine) - surplus :]) if surplus else ())


def settle_pause(window_periods: Collection[float], since_other: float | None) -> float:
    """How long a new owner waits before its first call so that no rate window at the server
    holds both the old owner's last calls and its own: the longest window, less the time since
    the previous owner's lease ended (None: no previous owner)."""
    if since_other is None or not window_periods:
        return 0.0
    return max(0.0, max(window_periods) - max(0.0, since_other))
