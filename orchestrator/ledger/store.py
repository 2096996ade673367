"""Async repository over the ledger.

Writes go through one writer task that commits whatever operations are ready as a group: callers
await their own operation's durability, but many operations share one transaction and one
thread hop (DESIGN.md "Performance shape": ~10,000 transitions/s instead of ~500/s). Reads use
their own engine and never hold the write lock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import Connection, Table, delete, event, func, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from orchestrator.domain import (
    IN_FLIGHT,
    TERMINAL,
    Job,
    JobState,
    StaleState,
    check_transition,
)
from orchestrator.ledger.models import JobRow, QuotaUsageRow, ResultRow, TransitionRow

log = structlog.get_logger(__name__)

jobs_t: Table = JobRow.__table__  # type: ignore[assignment]  # declarative tables are Tables
transitions_t: Table = TransitionRow.__table__  # type: ignore[assignment]
results_t: Table = ResultRow.__table__  # type: ignore[assignment]
quota_t: Table = QuotaUsageRow.__table__  # type: ignore[assignment]

MAX_BATCH = 2000


def utcnow() -> datetime:
    return datetime.now(UTC)


def _naive(dt: datetime | None) -> datetime | None:
    """Stored as naive UTC (portable across SQLite and PostgreSQL 'timestamp')."""
    if dt is None:
        return None
    return dt.astimezone(UTC).replace(tzinfo=None) if dt.tzinfo else dt


def _aware(dt: datetime | None) -> datetime | None:
    return dt.replace(tzinfo=UTC) if dt is not None and dt.tzinfo is None else dt


_DATETIME_FIELDS = {
    "fire_time",
    "created_at",
    "updated_at",
    "submitted_at",
    "remote_done_at",
    "finished_at",
    "next_attempt_at",
    "deadline_at",
}


def row_to_job(row: Any) -> Job:
    m = row._mapping
    return Job(
        id=m["id"],
        pipeline=m["pipeline"],
        kind=m["kind"],
        provider=m["provider"],
        state=JobState(m["state"]),
        params=dict(m["params"] or {}),
        fire_time=_aware(m["fire_time"]),
        idempotency_key=m["idempotency_key"],
        remote_id=m["remote_id"],
        attempts=m["attempts"],
        max_attempts=m["max_attempts"],
        created_at=_aware(m["created_at"]),
        updated_at=_aware(m["updated_at"]),
        submitted_at=_aware(m["submitted_at"]),
        finished_at=_aware(m["finished_at"]),
        next_attempt_at=_aware(m["next_attempt_at"]),
        deadline_at=_aware(m["deadline_at"]),
        cancel_requested=bool(m["cancel_requested"]),
        error=m["error"],
        retry_of=m["retry_of"],
        result_path=m.get("path"),
        result_bytes=m.get("bytes"),
        result_sha256=m.get("sha256"),
        result_rows=m.get("rows"),
    )


# --- write operations (applied by the writer, inside one transaction) -------------------------


@dataclass(kw_only=True, slots=True)
class _Op:
    apply: Callable[[Connection], Any]
    future: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


def _transition_sync(
    conn: Connection,
    job_id: int,
    src: JobState,
    dst: JobState,
    reason: str | None,
    values: dict[str, Any],
    now: datetime,
) -> None:
    check_transition(job_id, src, dst)
    values = {k: (_naive(v) if k in _DATETIME_FIELDS else v) for k, v in values.items()}
    if dst in TERMINAL:
        values.setdefault("finished_at", _naive(now))
    res = conn.execute(
        update(jobs_t)
        .where(jobs_t.c.id == job_id, jobs_t.c.state == src.value)
        .values(state=dst.value, updated_at=_naive(now), **values)
    )
    if res.rowcount != 1:
        raise StaleState(job_id, src)
    conn.execute(
        insert(transitions_t).values(
            job_id=job_id, from_state=src.value, to_state=dst.value, at=_naive(now), reason=reason
        )
    )


class Ledger:
    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = make_url(url).get_backend_name() == "sqlite"
        self.write_engine = self._engine(write=True)
        self.read_engine = self._engine(write=False)
        self._queue: asyncio.Queue[_Op] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0
        self.ops = 0

    # --- engines ----------------------------------------------------------------------------
    def _engine(self, *, write: bool) -> AsyncEngine:
        if not self.is_sqlite:
            return create_async_engine(self.url, pool_pre_ping=True)
        db = make_url(self.url).database
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(self.url, poolclass=NullPool if not write else None)
        begin = "BEGIN IMMEDIATE" if write else "BEGIN"

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # We issue BEGIN ourselves (below), so the driver must not.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=15000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn: Any) -> None:
            # Writers take the write lock up front: a deferred transaction that later upgrades
            # its lock can deadlock against another process and fail with SQLITE_BUSY at once.
            conn.exec_driver_sql(begin)

        return engine

    async def start(self) -> None:
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(), name="ledger-writer")

    async def close(self) -> None:
        if self._writer is not None:
            await self.flush()
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        await self.write_engine.dispose()
        await self.read_engine.dispose()

    async def flush(self) -> None:
        await self._submit(lambda conn: None)

    async def ping(self) -> bool:
        try:
            async with self.read_engine.connect() as conn:
                await conn.execute(select(1))
            return True
        except Exception:
            return False

    # --- the group-commit writer ------------------------------------------------------------
    async def _submit(self, apply: Callable[[Connection], Any]) -> Any:
        if self._writer is None:
            await self.start()
        op = _Op(apply=apply)
        self._queue.put_nowait(op)
        return await asyncio.shield(op.future)

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._commit_batch(batch)

    async def _commit_batch(self, batch: list[_Op]) -> None:
        def run_all(conn: Connection) -> list[tuple[bool, Any]]:
            out: list[tuple[bool, Any]] = []
            for op in batch:
                try:
                    with conn.begin_nested() if len(batch) > 1 else contextlib.nullcontext():
                        out.append((True, op.apply(conn)))
                except Exception as exc:  # one bad op must not fail its neighbours
                    out.append((False, exc))
            return out

        try:
            async with self.write_engine.begin() as conn:
                outcomes = await conn.run_sync(run_all)
        except Exception as exc:
            log.error("ledger_write_failed", error=str(exc), ops=len(batch))
            for op in batch:
                if not op.future.done():
                    op.future.set_exception(exc)
            return
        self.batches += 1
        self.ops += len(batch)
        for op, (ok, value) in zip(batch, outcomes, strict=True):
            if op.future.done():
                continue
            if ok:
                op.future.set_result(value)
            else:
                op.future.set_exception(value)

    # --- writes -----------------------------------------------------------------------------
    async def enqueue(
        self,
        *,
        pipeline: str,
        kind: str,
        provider: str,
        params: dict[str, Any],
        idempotency_key: str,
        fire_time: datetime | None,
        max_attempts: int,
        deadline_at: datetime | None = None,
        reason: str = "scheduled",
        retry_of: int | None = None,
    ) -> int | None:
        """Insert a PENDING job unless one with the same idempotency key exists. Returns its id,
        or None when the key was already taken (an earlier process enqueued this run)."""
        now = utcnow()

        def apply(conn: Connection) -> int | None:
            exists = conn.execute(
                select(jobs_t.c.id).where(jobs_t.c.idempotency_key == idempotency_key)
            ).first()
            if exists is not None:
                return None
            job_id = conn.execute(
                insert(jobs_t)
                .values(
                    pipeline=pipeline,
                    kind=kind,
                    provider=provider,
                    state=JobState.PENDING.value,
                    params=params,
                    fire_time=_naive(fire_time),
                    idempotency_key=idempotency_key,
                    attempts=0,
                    max_attempts=max_attempts,
                    polls=0,
                    created_at=_naive(now),
                    updated_at=_naive(now),
                    deadline_at=_naive(deadline_at),
                    cancel_requested=False,
                    retry_of=retry_of,
                )
                .returning(jobs_t.c.id)
            ).scalar_one()
            conn.execute(
                insert(transitions_t).values(
                    job_id=job_id,
                    from_state=None,
                    to_state="PENDING",
                    at=_naive(now),
                    reason=reason,
                )
            )
            return int(job_id)

        result: int | None = await self._submit(apply)
        return result

    async def transition(
        self,
        job: Job | int,
        src: JobState,
        dst: JobState,
        *,
        reason: str | None = None,
        quota: str | None = None,
        refund_quota: bool = False,
        result: dict[str, Any] | None = None,
        **values: Any,
    ) -> None:
        """Move a job src → dst (checked against domain.TRANSITIONS and the stored state).

        `quota=provider` records one unit of rolling quota in the same transaction (a submission
        about to leave); `refund_quota` gives back the job's latest unit (nothing was created, or
        the provider freed it); `result` records the result row with the transition.
        """
        job_id = job if isinstance(job, int) else job.id
        now = utcnow()

        def apply(conn: Connection) -> None:
            _transition_sync(conn, job_id, src, dst, reason, values, now)
            if quota is not None:
                conn.execute(
                    insert(quota_t).values(
                        provider=quota, job_id=job_id, at=_naive(now), refunded=False
                    )
                )
            if refund_quota:
                last = conn.execute(
                    select(func.max(quota_t.c.id)).where(
                        quota_t.c.job_id == job_id, quota_t.c.refunded.is_(False)
                    )
                ).scalar()
                if last is not None:
                    conn.execute(update(quota_t).where(quota_t.c.id == last).values(refunded=True))
            if result is not None:
                conn.execute(delete(results_t).where(results_t.c.job_id == job_id))
                conn.execute(
                    insert(results_t).values(job_id=job_id, created_at=_naive(now), **result)
                )

        await self._submit(apply)

    async def update_fields(self, job_id: int, **values: Any) -> None:
        """Non-state bookkeeping (poll counts) with no transition row."""
        vals = {k: (_naive(v) if k in _DATETIME_FIELDS else v) for k, v in values.items()}
        await self._submit(
            lambda conn: conn.execute(update(jobs_t).where(jobs_t.c.id == job_id).values(**vals))
        )

    async def request_cancel(self, job_id: int) -> JobState:
        """Ask for a job to be cancelled. PENDING/RETRY_WAIT jobs are cancelled at once; in-flight
        ones are flagged for the daemon, which cancels the remote job first."""
        now = utcnow()

        def apply(conn: Connection) -> JobState:
            row = conn.execute(select(jobs_t.c.state).where(jobs_t.c.id == job_id)).first()
            if row is None:
                raise KeyError(job_id)
            state = JobState(row[0])
            if state in (JobState.PENDING, JobState.RETRY_WAIT):
                _transition_sync(
                    conn, job_id, state, JobState.CANCELLED, "cancelled by user", {}, now
                )
                return JobState.CANCELLED
            if state not in TERMINAL:
                conn.execute(
                    update(jobs_t).where(jobs_t.c.id == job_id).values(cancel_requested=True)
                )
            return state

        state: JobState = await self._submit(apply)
        return state

    # --- reads ------------------------------------------------------------------------------
    def _job_select(self) -> Any:
        return select(
            jobs_t, results_t.c.path, results_t.c.bytes, results_t.c.sha256, results_t.c.rows
        ).select_from(jobs_t.outerjoin(results_t, results_t.c.job_id == jobs_t.c.id))

    async def get(self, job_id: int) -> Job | None:
        async with self.read_engine.connect() as conn:
            row = (await conn.execute(self._job_select().where(jobs_t.c.id == job_id))).first()
        return row_to_job(row) if row is not None else None

    async def list_jobs(
        self,
        *,
        states: Sequence[JobState] | None = None,
        pipeline: str | None = None,
        provider: str | None = None,
        limit: int | None = None,
        offset: int = 0,
        oldest_first: bool = False,
    ) -> list[Job]:
        stmt = self._job_select()
        if states:
            stmt = stmt.where(jobs_t.c.state.in_([s.value for s in states]))
        if pipeline:
            stmt = stmt.where(jobs_t.c.pipeline == pipeline)
        if provider:
            stmt = stmt.where(jobs_t.c.provider == provider)
        stmt = stmt.order_by(jobs_t.c.id if oldest_first else jobs_t.c.id.desc())
        if limit is not None:
            stmt = stmt.limit(limit).offset(offset)
        async with self.read_engine.connect() as conn:
            rows = (await conn.execute(stmt)).fetchall()
        return [row_to_job(r) for r in rows]

    async def transitions(self, job_id: int) -> list[dict[str, Any]]:
        stmt = (
            select(transitions_t)
            .where(transitions_t.c.job_id == job_id)
            .order_by(transitions_t.c.id)
        )
        async with self.read_engine.connect() as conn:
            rows = (await conn.execute(stmt)).fetchall()
        return [
            {
                "from": r.from_state,
                "to": r.to_state,
                "at": _iso(_aware(r.at)),
                "reason": r.reason,
            }
            for r in rows
        ]

    async def counts_by_state(self) -> dict[str, int]:
        stmt = select(jobs_t.c.state, func.count()).group_by(jobs_t.c.state)
        async with self.read_engine.connect() as conn:
            return {s: int(n) for s, n in (await conn.execute(stmt)).all()}

    async def quota_times(self, provider: str, since: datetime) -> list[datetime]:
        stmt = select(quota_t.c.at).where(
            quota_t.c.provider == provider,
            quota_t.c.refunded.is_(False),
            quota_t.c.at > _naive(since),
        )
        async with self.read_engine.connect() as conn:
            rows = (await conn.execute(stmt)).scalars().all()
        return [_aware(t) for t in rows if t is not None]  # type: ignore[misc]

    async def in_flight_count(self, provider: str) -> int:
        """Jobs holding a remote slot: SUBMITTING and RUNNING (queued+running at the provider)"""
        stmt = select(func.count()).where(
            jobs_t.c.provider == provider,
            jobs_t.c.state.in_([JobState.SUBMITTING.value, JobState.RUNNING.value]),
        )
        async with self.read_engine.connect() as conn:
            return int((await conn.execute(stmt)).scalar_one())

    async def known_remote_ids(self, provider: str) -> set[str]:
        stmt = select(jobs_t.c.remote_id).where(
            jobs_t.c.provider == provider, jobs_t.c.remote_id.is_not(None)
        )
        async with self.read_engine.connect() as conn:
            return {r for r in (await conn.execute(stmt)).scalars().all() if r}

    async def durations(self, pipeline: str, limit: int = 50) -> list[float]:
        """Seconds from submission to the provider reporting done, for the last successful runs."""
        stmt = (
            select(jobs_t.c.submitted_at, jobs_t.c.remote_done_at)
            .where(
                jobs_t.c.pipeline == pipeline,
                jobs_t.c.remote_done_at.is_not(None),
                jobs_t.c.submitted_at.is_not(None),
            )
            .order_by(jobs_t.c.id.desc())
            .limit(limit)
        )
        async with self.read_engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [max(0.0, (b - a).total_seconds()) for a, b in rows]

    async def last_fire_time(self, pipeline: str) -> datetime | None:
        stmt = select(func.max(jobs_t.c.fire_time)).where(
            jobs_t.c.pipeline == pipeline, jobs_t.c.idempotency_key.like("sched:%")
        )
        async with self.read_engine.connect() as conn:
            return _aware((await conn.execute(stmt)).scalar())

    async def has_unfinished(self) -> bool:
        stmt = select(func.count()).where(jobs_t.c.state.not_in([s.value for s in TERMINAL]))
        async with self.read_engine.connect() as conn:
            return int((await conn.execute(stmt)).scalar_one()) > 0

    async def in_flight(self) -> list[Job]:
        return await self.list_jobs(states=sorted(IN_FLIGHT), oldest_first=True)


def _iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def job_to_dict(job: Job) -> dict[str, Any]:
    """The `--json` shape of a job (DESIGN.md interface contract)."""
    return {
        "id": job.id,
        "pipeline": job.pipeline,
        "kind": job.kind,
        "provider": job.provider,
        "state": job.state.value,
        "remote_id": job.remote_id,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "params": job.params,
        "fire_time": _iso(job.fire_time),
        "created_at": _iso(job.created_at),
        "submitted_at": _iso(job.submitted_at),
        "finished_at": _iso(job.finished_at),
        "result_path": job.result_path,
        "result_bytes": job.result_bytes,
        "result_sha256": job.result_sha256,
        "result_rows": job.result_rows,
        "error": job.error,
        "cancel_requested": job.cancel_requested,
        "retry_of": job.retry_of,
    }
