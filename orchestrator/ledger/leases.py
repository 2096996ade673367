"""Replicas and account leases in the ledger (migration 0009): the statements behind
orchestrator.leasing's rules. Each function runs in one write transaction (Ledger.run_write).

Times are the database's clock on PostgreSQL (replicas on several hosts agree on it whatever
their own clocks say); SQLite serves one host, whose clock it is.

Taking leases uses `SELECT … FOR UPDATE SKIP LOCKED` on PostgreSQL: two replicas looking at the
same free account at once do not both wait for it; one takes it, the other takes another or
none. SQLite has one writer at a time, which serialises the same statements.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Table, delete, func, insert, or_, select, text, update

from orchestrator.leasing import LEADER, plan
from orchestrator.ledger.dialects import insert_new
from orchestrator.ledger.models import LeaseRow, ReplicaRow

replicas_t: Table = ReplicaRow.__table__  # type: ignore[assignment]
leases_t: Table = LeaseRow.__table__  # type: ignore[assignment]
FORGET_AFTER = timedelta(days=7)  # rows of replicas gone this long are deleted


@dataclass(frozen=True)
class Replica:
    id: str
    host: str
    pid: int
    version: str


@dataclass(frozen=True)
class Taken:
    name: str
    since_other: float | None  # seconds since the previous owner's lease ended; None: no owner


@dataclass(frozen=True)
class Round:
    """What one heartbeat found: the leases this replica holds now (renewed or taken), those
    newly taken, whether it leads, and the accounts to give back once idle."""

    held: frozenset[str]
    taken: tuple[Taken, ...]
    leader: bool
    give_back: tuple[str, ...]
    live: int
    # Seconds until the next lease of another replica expires (None: none will): a replica
    # looks again right then, not up to a heartbeat later, so a dead replica's accounts are
    # taken within `lease` however long the rounds themselves take.
    next_expiry: float | None = None


def db_now(conn: Connection) -> datetime:
    """Now, naive UTC, by the database's clock where replicas may be on several hosts."""
    if conn.dialect.name == "postgresql":
        value = conn.execute(text("SELECT timezone('utc', now())")).scalar_one()
        return value.replace(tzinfo=None) if value.tzinfo else value  # type: ignore[no-any-return]
    return datetime.now(UTC).replace(tzinfo=None)


def register(conn: Connection, me: Replica) -> None:
    now = db_now(conn)
    conn.execute(
        insert(replicas_t).values(
            id=me.id,
            host=me.host,
            pid=me.pid,
            version=me.version,
            started_at=now,
            heartbeat_at=now,
            stopped_at=None,
        )
    )
    conn.execute(
        delete(replicas_t).where(
            func.coalesce(replicas_t.c.stopped_at, replicas_t.c.heartbeat_at) < now - FORGET_AFTER
        )
    )


def _ensure_rows(conn: Connection, names: list[str]) -> None:
    """A lease row per account (a new account in the config gets one at the next heartbeat)."""
    have = set(conn.execute(select(leases_t.c.name).where(leases_t.c.name.in_(names))).scalars())
    new = [{"name": n, "owner": None, "epoch": 0} for n in names if n not in have]
    if new:
        conn.execute(insert_new(conn, leases_t, "name"), new)


def heartbeat(
    conn: Connection,
    me: Replica,
    accounts: list[str],
    ttl: float,
    *,
    exclusive: bool = False,
    taking: bool = True,
) -> Round:
    """Prove this replica alive, renew its unexpired leases, and take its fair share of the
    free or expired ones (and the leader's, if free). `exclusive`: no other process can be
    alive (SQLite under the daemon lock): take every lease whoever held it. `taking=False`:
    renew only (the replica is stopping)."""
    now = db_now(conn)
    until = now + timedelta(seconds=ttl)
    conn.execute(update(replicas_t).where(replicas_t.c.id == me.id).values(heartbeat_at=now))
    names = [*accounts, LEADER]
    _ensure_rows(conn, names)
    renewed = set(
        conn.execute(
            update(leases_t)
            .where(
                leases_t.c.owner == me.id,
                leases_t.c.expires_at > now,
                leases_t.c.name.in_(names),
            )
            .values(expires_at=until)
            .returning(leases_t.c.name)
        ).scalars()
    )
    live = conn.execute(
        select(func.count())
        .select_from(replicas_t)
        .where(
            replicas_t.c.stopped_at.is_(None),
            replicas_t.c.heartbeat_at > now - timedelta(seconds=ttl),
        )
    ).scalar_one()
    taken: list[Taken] = []
    give_back: tuple[str, ...] = ()
    if taking:
        want = plan(accounts, renewed, int(live))
        give_back = want.give_back
        candidates = [a for a in accounts if a not in renewed]
        if exclusive:
            taken += _take(conn, me, candidates, len(candidates), now, until, ttl, force=True)
        elif want.take:
            taken += _take(conn, me, candidates, want.take, now, until, ttl, force=False)
        if LEADER not in renewed:
            taken += _take(conn, me, [LEADER], 1, now, until, ttl, force=exclusive)
    held = frozenset(renewed | {t.name for t in taken})
    soonest = conn.execute(
        select(func.min(leases_t.c.expires_at)).where(
            leases_t.c.name.in_(names),
            leases_t.c.owner.is_not(None),
            leases_t.c.owner != me.id,
            leases_t.c.expires_at > now,
        )
    ).scalar_one_or_none()
    return Round(
        held=frozenset(held - {LEADER}),
        taken=tuple(t for t in taken if t.name != LEADER),
        leader=LEADER in held,
        give_back=give_back,
        live=int(live),
        next_expiry=None if soonest is None else (soonest - now).total_seconds(),
    )


def _take(
    conn: Connection,
    me: Replica,
    names: list[str],
    most: int,
    now: datetime,
    until: datetime,
    ttl: float,
    *,
    force: bool,
) -> list[Taken]:
    if not names or most <= 0:
        return []
    free = or_(leases_t.c.owner.is_(None), leases_t.c.expires_at <= now)
    stmt = (
        select(leases_t.c.name, leases_t.c.owner, leases_t.c.expires_at)
        .where(leases_t.c.name.in_(names), *(() if force else (free,)))
        .order_by(leases_t.c.name)
        .limit(most)
        .with_for_update(skip_locked=True)
    )
    rows = conn.execute(stmt).fetchall()
    out: list[Taken] = []
    for row in rows:
        conn.execute(
            update(leases_t)
            .where(leases_t.c.name == row.name)
            .values(owner=me.id, epoch=leases_t.c.epoch + 1, acquired_at=now, expires_at=until)
        )
        since: float | None = None
        if row.expires_at is not None and row.owner != me.id and not force:
            # Given back: its owner's calls ended before it released the lease. Expired: the
            # owner stopped calling by `fence` (ttl / 2) after its last renewal at the latest.
            since = (now - row.expires_at).total_seconds()
            if row.owner is not None:
                since += ttl / 2
        out.append(Taken(row.name, since))
    return out


IDLE_UNKNOWN = 3600.0  # seconds: an account this replica never called


def release(conn: Connection, me: Replica, idle: dict[str, float | None]) -> None:
    """Give leases back now (the calls under them have ended): another replica may take them
    at its next heartbeat. `idle`: per account, seconds since its last call here; the lease is
    recorded as ended then, so the next owner waits out only what is left of the rate windows
    (orchestrator.leasing.settle_pause)."""
    now = db_now(conn)
    for name, seconds in idle.items():
        ended = now - timedelta(seconds=IDLE_UNKNOWN if seconds is None else max(0.0, seconds))
        conn.execute(
            update(leases_t)
            .where(leases_t.c.owner == me.id, leases_t.c.name == name)
            .values(owner=None, expires_at=ended)
        )


def stopped(conn: Connection, me: Replica, idle: dict[str, float | None]) -> None:
    """A clean stop: every lease back, the replica marked stopped."""
    release(conn, me, idle)
    now = db_now(conn)
    conn.execute(
        update(leases_t).where(leases_t.c.owner == me.id).values(owner=None, expires_at=now)
    )
    conn.execute(update(replicas_t).where(replicas_t.c.id == me.id).values(stopped_at=now))


def retire_others(conn: Connection, me: Replica) -> None:
    """Under the SQLite daemon lock no other daemon lives: mark the rows of earlier ones (killed
    without a clean stop) stopped, so `replicas` does not show them alive."""
    now = db_now(conn)
    conn.execute(
        update(replicas_t)
        .where(replicas_t.c.id != me.id, replicas_t.c.stopped_at.is_(None))
        .values(stopped_at=now)
    )


def overview(conn: Connection) -> dict[str, Any]:
    """Every replica the ledger remembers, with the leases it holds, for `replicas`, the status
    page and metrics."""
    now = db_now(conn)
    leases = conn.execute(select(leases_t).order_by(leases_t.c.name)).fetchall()
    rows = conn.execute(
        select(replicas_t).order_by(replicas_t.c.started_at, replicas_t.c.id)
    ).fetchall()
    owned: dict[str, list[str]] = {}
    for lease in leases:
        if lease.owner is not None and lease.expires_at is not None and lease.expires_at > now:
            owned.setdefault(lease.owner, []).append(lease.name)
    replicas = []
    for r in rows:
        mine = owned.get(r.id, [])
        replicas.append(
            {
                "id": r.id,
                "host": r.host,
                "pid": r.pid,
                "version": r.version,
                "started_at": _iso(r.started_at),
                "last_heartbeat": _iso(r.heartbeat_at),
                "heartbeat_age": round((now - r.heartbeat_at).total_seconds(), 1),
                "stopped_at": _iso(r.stopped_at),
                "accounts": [n for n in mine if n != LEADER],
                "leader": LEADER in mine,
            }
        )
    return {
        "now": _iso(now),
        "replicas": replicas,
        "leases": [
            {
                "account": lease.name,
                "owner": lease.owner
                if lease.expires_at is not None and lease.expires_at > now
                else None,
                "epoch": lease.epoch,
                "expires_at": _iso(lease.expires_at),
            }
            for lease in leases
            if lease.name != LEADER
        ],
    }


def alive(replica: dict[str, Any], ttl: float) -> bool:
    return replica["stopped_at"] is None and replica["heartbeat_age"] < ttl


def _iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")


__all__ = [
    "Replica",
    "Round",
    "Taken",
    "alive",
    "heartbeat",
    "overview",
    "register",
    "release",
    "retire_others",
    "stopped",
]
