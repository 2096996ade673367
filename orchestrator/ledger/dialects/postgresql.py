"""PostgreSQL below the group-commit writer: the URL's own async driver, each transition and
each enqueue one prebuilt statement (data-modifying CTEs), so an operation costs one round trip
to the server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    DateTime,
    String,
    Text,
    bindparam,
    false,
    insert,
    literal,
    null,
    select,
    update,
)
from sqlalchemy.ext.asyncio import create_async_engine

from orchestrator.domain import JobState, StaleState
from orchestrator.ledger.rows import (
    _DATETIME_FIELDS,
    _naive,
    jobs_t,
    quota_t,
    remote_jobs_t,
    transitions_t,
)

T = TypeVar("T")


def transition(
    conn: Connection,
    job_id: int,
    src: JobState,
    dst: JobState,
    reason: str | None,
    values: dict[str, Any],
    now: datetime,
    quota: str | None,
) -> None:
    """One transition (see dialects.transition): one statement, then the remote id's owner."""
    _transition_one_statement(conn, job_id, src, dst, reason, values, now, quota)
    if values.get("remote_id"):
        _own_remote(conn, job_id, values["remote_id"], now)


def _own_remote(conn: Connection, job_id: int, remote_id: str, now: datetime) -> None:
    """Record that `job_id` owns `remote_id` for good (PostgreSQL; SQLite does it on its raw
    cursor): a second owner fails the primary key."""
    already = (
        select(remote_jobs_t.c.job_id)
        .where(
            remote_jobs_t.c.provider == jobs_t.c.provider,
            remote_jobs_t.c.remote_id == str(remote_id),
            remote_jobs_t.c.job_id == job_id,
        )
        .exists()
    )
    owner = select(
        jobs_t.c.provider,
        literal(str(remote_id)),
        jobs_t.c.id,
        literal(_naive(now), DateTime()),
    ).where(jobs_t.c.id == job_id, ~already)
    conn.execute(
        insert(remote_jobs_t).from_select(["provider", "remote_id", "job_id", "at"], owner)
    )


def _transition_one_statement(
    conn: Connection,
    job_id: int,
    src: JobState,
    dst: JobState,
    reason: str | None,
    values: dict[str, Any],
    now: datetime,
    quota: str | None,
) -> None:
    """PostgreSQL: the update, its transition row and the quota unit as one statement (data-
    modifying CTEs), so a transition costs one round trip to the server, not three. Rows are
    inserted only if the guarded update matched, so nothing is written for a stale state."""
    keys = tuple(sorted(values))
    params: dict[str, Any] = {
        "job_id": job_id,
        "src": src.value,
        "dst": dst.value,
        "at": _naive(now),
        "reason": reason,
        "quota": quota,
        **{f"v_{k}": (_naive(v) if k in _DATETIME_FIELDS else v) for k, v in values.items()},
    }
    # The returned row, not rowcount: psycopg reports no count for INSERT … SELECT with CTEs.
    if conn.execute(_transition_statement(keys, quota is not None), params).first() is None:
        raise StaleState(job_id, src)


_TRANSITION_STATEMENTS: dict[tuple[tuple[str, ...], bool], Any] = {}


def _transition_statement(keys: tuple[str, ...], with_quota: bool) -> Any:
    """The transition statement for one set of updated columns, built once: building and
    hashing a fresh CTE statement per transition cost ~1 ms of CPU, the statement itself ~0.2."""
    cached = _TRANSITION_STATEMENTS.get((keys, with_quota))
    if cached is not None:
        return cached
    at = bindparam("at", type_=DateTime())
    moved = (
        update(jobs_t)
        .where(jobs_t.c.id == bindparam("job_id"), jobs_t.c.state == bindparam("src"))
        .values(
            state=bindparam("dst", type_=String()),
            updated_at=at,
            **{k: bindparam(f"v_{k}", type_=jobs_t.c[k].type) for k in keys},
        )
        .returning(jobs_t.c.id)
        .cte("moved")
    )
    stmt = insert(transitions_t).from_select(
        ["job_id", "from_state", "to_state", "at", "reason"],
        select(
            moved.c.id,
            bindparam("src", type_=String()),
            bindparam("dst", type_=String()),
            at,
            bindparam("reason", type_=Text()),
        ),
    )
    if with_quota:
        unit = insert(quota_t).from_select(
            ["provider", "job_id", "at", "refunded"],
            select(bindparam("quota", type_=String()), moved.c.id, at, false()),
        )
        stmt = stmt.add_cte(unit.cte("unit"))
    stmt = stmt.returning(transitions_t.c.id)
    _TRANSITION_STATEMENTS[(keys, with_quota)] = stmt
    return stmt


_ENQUEUE_STATEMENTS: dict[tuple[str, ...], Any] = {}


def enqueue_statement(columns: tuple[str, ...]) -> Any:
    """PostgreSQL: insert a job unless its idempotency key is taken, with its first transition
    row, in one statement built once. ON CONFLICT, not look-then-insert: two processes
    enqueueing the same run at once must not both see the key free, nor the loser fail its
    whole batch. Returns the new job's id, or no row when the key was taken."""
    cached = _ENQUEUE_STATEMENTS.get(columns)
    if cached is not None:
        return cached
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    # Binds are named after the job's columns; the transition row reuses `state` (PENDING).

    new = (
        pg_insert(jobs_t)
        .values({c: bindparam(c, type_=jobs_t.c[c].type) for c in columns})
        .on_conflict_do_nothing(index_elements=[jobs_t.c.idempotency_key])
        .returning(jobs_t.c.id)
        .cte("new")
    )
    stmt = (
        insert(transitions_t)
        .from_select(
            ["job_id", "from_state", "to_state", "at", "reason"],
            select(
                new.c.id,
                null(),
                bindparam("state", type_=String()),
                bindparam("at", type_=DateTime()),
                bindparam("reason", type_=Text()),
            ),
        )
        .returning(transitions_t.c.job_id)
    )
    _ENQUEUE_STATEMENTS[columns] = stmt
    return stmt


class AsyncWrites:
    """PostgreSQL's write path: the URL's own async driver, one connection, `fn` run on it
    through SQLAlchemy's greenlet bridge (no thread, no second driver). The lock keeps the
    writer and migrations one transaction at a time, as SQLite's single thread does."""

    def __init__(self, url: str) -> None:
        self.engine = create_async_engine(url, pool_size=1, max_overflow=0, pool_pre_ping=True)
        self._lock = asyncio.Lock()

    async def run(self, fn: Callable[[Connection], T]) -> T:
        async with self._lock, self.engine.begin() as conn:
            return await conn.run_sync(fn)

    async def close(self) -> None:
        await self.engine.dispose()
