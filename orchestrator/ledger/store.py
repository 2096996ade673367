"""Async repository over the ledger.

Writes go through one writer task that commits whatever operations are ready as a group: callers
await their own operation's durability, but many operations share one transaction and one
thread hop (DESIGN.md "Performance shape": ~10,000 transitions/s instead of ~500/s). Reads use
their own engine and never hold the write lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import structlog
from sqlalchemy import (
    Connection,
    Engine,
    Table,
    case,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    true,
    union,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from orchestrator.domain import (
    IN_FLIGHT,
    TERMINAL,
    IllegalTransition,
    ImportProgress,
    Job,
    JobState,
    Part,
    PartState,
    StaleState,
    check_transition,
)
from orchestrator.ledger.models import (
    ImportProgressRow,
    JobPartRow,
    JobRow,
    QuotaUsageRow,
    ResultRow,
    TransitionRow,
)

log = structlog.get_logger(__name__)

jobs_t: Table = JobRow.__table__  # type: ignore[assignment]  # declarative tables are Tables
transitions_t: Table = TransitionRow.__table__  # type: ignore[assignment]
results_t: Table = ResultRow.__table__  # type: ignore[assignment]
quota_t: Table = QuotaUsageRow.__table__  # type: ignore[assignment]
parts_t: Table = JobPartRow.__table__  # type: ignore[assignment]
progress_t: Table = ImportProgressRow.__table__  # type: ignore[assignment]

MAX_BATCH = 2000
T = TypeVar("T")


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


@dataclass(slots=True)
class _Op:
    apply: Callable[[Connection], Any]
    future: asyncio.Future[Any]  # cancelled by a caller who stopped waiting: applied all the same


class BatchError(Exception):
    """An operation failed after it had written: the batch must be rolled back and replayed."""


_JOB_COLUMNS = frozenset(c.name for c in JobRow.__table__.columns)


_last_stamp: tuple[datetime, str] | None = None


def _stamp(value: datetime) -> str:
    """A datetime as SQLAlchemy stores it in SQLite ('YYYY-MM-DD HH:MM:SS.ffffff', naive UTC).
    The writer formats the same `now` several times per transition (updated_at, the transition
    row, submitted_at, the quota row): the last one is kept, by identity."""
    global _last_stamp
    last = _last_stamp
    if last is not None and last[0] is value:
        return last[1]
    naive = _naive(value)
    assert naive is not None
    text = naive.isoformat(sep=" ", timespec="microseconds")
    _last_stamp = (value, text)
    return text


def _db(key: str, value: Any) -> Any:
    """A value as SQLAlchemy itself would store it in SQLite (so ORM/Core reads agree)."""
    if value is None:
        return None
    if key in _DATETIME_FIELDS or isinstance(value, datetime):
        return _stamp(value)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict | list):
        return json.dumps(value)
    return value


def _cursor(conn: Connection) -> Any:
    """The DBAPI cursor of the writer's connection: prepared statements cached by SQL text, no
    per-statement compile (the hot path; ~10x cheaper than a Core execute)."""
    return conn.connection.driver_connection.cursor()  # type: ignore[union-attr]


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
    if dst in TERMINAL:
        values = {"finished_at": now, **values}
    unknown = set(values) - _JOB_COLUMNS
    if unknown:
        raise ValueError(f"not job columns: {sorted(unknown)}")
    keys = sorted(values)
    stamp = _db("at", now)
    if conn.dialect.name == "sqlite":
        cur = _cursor(conn)
        sets = ", ".join(["state = ?", "updated_at = ?", *(f"{k} = ?" for k in keys)])
        cur.execute(
            f"UPDATE jobs SET {sets} WHERE id = ? AND state = ?",  # noqa: S608 (column names checked)
            [dst.value, stamp, *(_db(k, values[k]) for k in keys), job_id, src.value],
        )
        if cur.rowcount != 1:
            raise StaleState(job_id, src)
        cur.execute(
            "INSERT INTO transitions (job_id, from_state, to_state, at, reason) "
            "VALUES (?, ?, ?, ?, ?)",
            (job_id, src.value, dst.value, stamp, reason),
        )
        return
    vals = {k: (_naive(v) if k in _DATETIME_FIELDS else v) for k, v in values.items()}
    res = conn.execute(
        update(jobs_t)
        .where(jobs_t.c.id == job_id, jobs_t.c.state == src.value)
        .values(state=dst.value, updated_at=_naive(now), **vals)
    )
    if res.rowcount != 1:
        raise StaleState(job_id, src)
    conn.execute(
        insert(transitions_t).values(
            job_id=job_id, from_state=src.value, to_state=dst.value, at=_naive(now), reason=reason
        )
    )


def _extras_sqlite(
    conn: Connection,
    job_id: int,
    now: datetime,
    quota: str | None,
    refund: bool,
    result: dict[str, Any] | None,
) -> None:
    """The rows that ride along with a transition (quota unit, refund, result), raw SQLite."""
    cur = _cursor(conn)
    stamp = _db("at", now)
    if quota is not None:
        cur.execute(
            "INSERT INTO quota_usage (provider, job_id, at, refunded) VALUES (?, ?, ?, 0)",
            (quota, job_id, stamp),
        )
    if refund:
        cur.execute(
            "UPDATE quota_usage SET refunded = 1 WHERE id = (SELECT max(id) FROM quota_usage "
            "WHERE job_id = ? AND refunded = 0)",
            (job_id,),
        )
    if result is not None:
        cur.execute(
            "INSERT OR REPLACE INTO results (job_id, path, bytes, sha256, rows, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (job_id, result["path"], result["bytes"], result["sha256"], result["rows"], stamp),
        )


def _sqlite_setup(engine: Engine, begin: str, *, wal: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # We issue BEGIN ourselves (below), so the driver must not.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        if wal:  # persistent in the file; only the writer needs to set it
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=15000")
        cur.execute("PRAGMA foreign_keys=ON")
        if not wal:
            # Readers: a 512 KiB page cache each instead of 2 MiB (up to 8 pooled connections);
            # the OS page cache holds the file anyway, and resident memory is a target.
            cur.execute("PRAGMA cache_size=-512")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writers take the write lock up front: a deferred transaction that later upgrades
        # its lock can deadlock against another process and fail with SQLITE_BUSY at once.
        conn.exec_driver_sql(begin)


class Ledger:
    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = make_url(url).get_backend_name() == "sqlite"
        # Writes: a synchronous engine driven from one dedicated thread, so a whole batch of
        # operations costs one thread hop (aiosqlite hops once per statement). Reads: async.
        self.write_engine = self._sync_engine()
        self._write_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-writer")
        self.read_engine = self._engine(write=False)
        self._pending: list[_Op] = []  # in order; the writer takes up to MAX_BATCH at a time
        self._pending_wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0
        self.ops = 0
        self.on_commit: Callable[[float], None] | None = None  # commit latency observer

    # --- engines ----------------------------------------------------------------------------
    def _sync_engine(self) -> Engine:
        url = make_url(self.url)
        sync_driver = {"aiosqlite": "pysqlite", "asyncpg": "psycopg"}.get(url.get_driver_name())
        if sync_driver is not None:
            url = url.set(drivername=f"{url.get_backend_name()}+{sync_driver}")
        if not self.is_sqlite:
            return create_engine(url, pool_pre_ping=True, pool_size=1)
        engine = create_engine(url, pool_size=1, max_overflow=0)
        _sqlite_setup(engine, "BEGIN IMMEDIATE", wal=True)
        return engine

    async def run_write(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn` in one write transaction on the writer thread."""

        def go() -> T:
            with self.write_engine.begin() as conn:
                return fn(conn)

        return await asyncio.get_running_loop().run_in_executor(self._write_thread, go)

    def _engine(self, *, write: bool) -> AsyncEngine:
        if not self.is_sqlite:
            return create_async_engine(self.url, pool_pre_ping=True)
        db = make_url(self.url).database
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(self.url, pool_size=4, max_overflow=4)
        _sqlite_setup(engine.sync_engine, "BEGIN IMMEDIATE" if write else "BEGIN", wal=write)
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
        await asyncio.get_running_loop().run_in_executor(
            self._write_thread, self.write_engine.dispose
        )
        self._write_thread.shutdown(wait=False)
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
        # The hot path: one future per write, no queue object, no shield. A caller cancelled
        # while waiting cancels only its future; the write itself is still applied, in order.
        op = _Op(apply, asyncio.get_running_loop().create_future())
        self._pending.append(op)
        self._pending_wake.set()
        return await op.future

    async def _write_loop(self) -> None:
        while True:
            if not self._pending:
                self._pending_wake.clear()
                await self._pending_wake.wait()
                continue
            batch = self._pending[:MAX_BATCH]
            del self._pending[:MAX_BATCH]
            await self._commit_batch(batch)

    async def _commit_batch(self, batch: list[_Op]) -> None:
        """All ops in one transaction. An op may refuse (StaleState, IllegalTransition) before it
        writes anything, and fails alone; an op that fails after writing rolls the batch back,
        and the batch is replayed one op per transaction so its neighbours still land."""

        def run_all(conn: Connection) -> list[tuple[bool, Any]]:
            out: list[tuple[bool, Any]] = []
            for op in batch:
                try:
                    out.append((True, op.apply(conn)))
                except (StaleState, IllegalTransition, KeyError) as exc:
                    out.append((False, exc))
                except Exception as exc:
                    raise BatchError from exc
            return out

        started = time.perf_counter()
        try:
            outcomes = await self.run_write(run_all)
            if self.on_commit is not None:
                self.on_commit(time.perf_counter() - started)
        except BatchError:
            outcomes = [await self._commit_alone(op) for op in batch]
        except Exception as exc:
            log.error("ledger_write_failed", error=str(exc), ops=len(batch))
            outcomes = [(False, exc)] * len(batch)
        self.batches += 1
        self.ops += len(batch)
        for op, (ok, value) in zip(batch, outcomes, strict=True):
            if op.future.done():
                continue
            if ok:
                op.future.set_result(value)
            else:
                op.future.set_exception(value)

    async def _commit_alone(self, op: _Op) -> tuple[bool, Any]:
        try:
            return True, await self.run_write(op.apply)
        except Exception as exc:
            return False, exc

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

        row: dict[str, Any] = {
            "pipeline": pipeline,
            "kind": kind,
            "provider": provider,
            "state": JobState.PENDING.value,
            "params": params,
            "fire_time": fire_time,
            "idempotency_key": idempotency_key,
            "attempts": 0,
            "max_attempts": max_attempts,
            "polls": 0,
            "created_at": now,
            "updated_at": now,
            "deadline_at": deadline_at,
            "cancel_requested": False,
            "retry_of": retry_of,
        }

        def apply(conn: Connection) -> int | None:
            if conn.dialect.name == "sqlite":
                cur = _cursor(conn)
                cols = ", ".join(row)
                marks = ", ".join("?" for _ in row)
                cur.execute(
                    f"INSERT INTO jobs ({cols}) VALUES ({marks}) "  # noqa: S608 (fixed columns)
                    "ON CONFLICT (idempotency_key) DO NOTHING",
                    [_db(k, v) for k, v in row.items()],
                )
                if cur.rowcount != 1:
                    return None
                job_id = int(cur.lastrowid)
                cur.execute(
                    "INSERT INTO transitions (job_id, from_state, to_state, at, reason) "
                    "VALUES (?, NULL, 'PENDING', ?, ?)",
                    (job_id, _db("at", now), reason),
                )
                return job_id
            exists = conn.execute(
                select(jobs_t.c.id).where(jobs_t.c.idempotency_key == idempotency_key)
            ).first()
            if exists is not None:
                return None
            naive = {k: (_naive(v) if k in _DATETIME_FIELDS else v) for k, v in row.items()}
            new_id = conn.execute(
                insert(jobs_t).values(**naive).returning(jobs_t.c.id)
            ).scalar_one()
            conn.execute(
                insert(transitions_t).values(
                    job_id=new_id,
                    from_state=None,
                    to_state="PENDING",
                    at=_naive(now),
                    reason=reason,
                )
            )
            return int(new_id)

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
            if conn.dialect.name == "sqlite":
                _extras_sqlite(conn, job_id, now, quota, refund_quota, result)
                return
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

    async def save_parts(self, parts: Sequence[Part]) -> None:
        """Insert or replace parts of a job (all in one transaction)."""
        now = _naive(utcnow())
        rows = [
            {
                "job_id": p.job_id,
                "seq": p.seq,
                "state": p.state.value,
                "name": p.name,
                "remote_id": p.remote_id,
                "first_row": p.first_row,
                "row_count": p.row_count,
                "content_sha256": p.content_sha256,
                "path": p.path,
                "bytes": p.bytes,
                "sha256": p.sha256,
                "detail": p.detail,
                "credits": p.credits,
                "byte_start": p.byte_start,
                "byte_end": p.byte_end,
                "first_line": p.first_line,
                "last_line": p.last_line,
                "updated_at": now,
            }
            for p in parts
        ]

        def apply(conn: Connection) -> None:
            for row in rows:
                conn.execute(
                    delete(parts_t).where(
                        parts_t.c.job_id == row["job_id"], parts_t.c.seq == row["seq"]
                    )
                )
            if rows:
                conn.execute(insert(parts_t), rows)

        await self._submit(apply)

    # --- reads ------------------------------------------------------------------------------
    async def parts(self, job_id: int) -> list[Part]:
        stmt = select(parts_t).where(parts_t.c.job_id == job_id).order_by(parts_t.c.seq)
        async with self.read_engine.connect() as conn:
            rows = (await conn.execute(stmt)).fetchall()
        return [_row_to_part(r) for r in rows]

    async def parts_after(self, job_id: int, after_seq: int, limit: int) -> list[Part]:
        """Up to `limit` parts of a job with seq > `after_seq`, in order: a plan read a page at
        a time (an import of many GB has tens of thousands of chunks)."""
        stmt = (
            select(parts_t)
            .where(parts_t.c.job_id == job_id, parts_t.c.seq > after_seq)
            .order_by(parts_t.c.seq)
            .limit(limit)
        )
        async with self.read_engine.connect() as conn:
            rows = (await conn.execute(stmt)).fetchall()
        return [_row_to_part(r) for r in rows]

    async def done_content(self, pipeline: str, hashes: Sequence[str]) -> dict[str, Part]:
        """Parts of this pipeline's earlier jobs already DONE, by content hash: an import never
        sends the same rows twice, even when a fixed file comes back as a new job."""
        out: dict[str, Part] = {}
        async with self.read_engine.connect() as conn:
            for start in range(0, len(hashes), 500):
                stmt = (
                    select(parts_t)
                    .join(jobs_t, jobs_t.c.id == parts_t.c.job_id)
                    .where(
                        jobs_t.c.pipeline == pipeline,
                        parts_t.c.state == PartState.DONE.value,
                        parts_t.c.content_sha256.in_(list(hashes[start : start + 500])),
                    )
                )
                for r in (await conn.execute(stmt)).fetchall():
                    part = _row_to_part(r)
                    if part.content_sha256 is not None:
                        out[part.content_sha256] = part
        return out

    async def credits_used(self, provider: str, since: datetime) -> int:
        """Credits recorded by this provider's job parts since `since` (clariBI)."""
        stmt = (
            select(func.coalesce(func.sum(parts_t.c.credits), 0))
            .join(jobs_t, jobs_t.c.id == parts_t.c.job_id)
            .where(jobs_t.c.provider == provider, parts_t.c.updated_at > _naive(since))
        )
        async with self.read_engine.connect() as conn:
            return int((await conn.execute(stmt)).scalar_one())

    async def part_remote_ids(self, provider: str) -> set[str]:
        """Remote ids the provider's job parts already own (so recovery never adopts them)."""
        stmt = (
            select(parts_t.c.remote_id)
            .join(jobs_t, jobs_t.c.id == parts_t.c.job_id)
            .where(jobs_t.c.provider == provider, parts_t.c.remote_id.is_not(None))
        )
        async with self.read_engine.connect() as conn:
            return {str(r) for r in (await conn.execute(stmt)).scalars().all()}

    async def part_progress(self, job_ids: Sequence[int]) -> dict[int, tuple[int, int]]:
        """(parts finished, parts planned) of each job that has parts."""
        finished = [PartState.DONE.value, PartState.SKIPPED.value]
        stmt = (
            select(
                parts_t.c.job_id,
                func.sum(case((parts_t.c.state.in_(finished), 1), else_=0)),
                func.count(),
            )
            .where(parts_t.c.job_id.in_(list(job_ids)))
            .group_by(parts_t.c.job_id)
        )
        if not job_ids:
            return {}
        async with self.read_engine.connect() as conn:
            return {int(j): (int(d), int(n)) for j, d, n in (await conn.execute(stmt)).all()}

    async def save_import_progress(self, progress: ImportProgress) -> None:
        """Insert or replace an import's progress row (rows sent and confirmed are not stored:
        `import_progress` counts them from the parts)."""
        row = {
            "job_id": progress.job_id,
            "phase": progress.phase,
            "rows_validated": progress.rows_validated,
            "rows_rejected": progress.rows_rejected,
            "rejects_path": progress.rejects_path,
            "rejects": "\n".join(progress.rejects) or None,
            "source_size": progress.source_size,
            "source_mtime_ns": progress.source_mtime_ns,
            "rate": progress.rate,
            "updated_at": _naive(utcnow()),
        }

        def apply(conn: Connection) -> None:
            conn.execute(delete(progress_t).where(progress_t.c.job_id == row["job_id"]))
            conn.execute(insert(progress_t), [row])

        await self._submit(apply)

    async def import_progress(self, job_ids: Sequence[int]) -> dict[int, ImportProgress]:
        """Progress of each import job among `job_ids`: its progress row, with rows sent,
        confirmed and rejected by the provider counted from its parts."""
        if not job_ids:
            return {}
        ids = list(job_ids)
        sent = [PartState.RUNNING.value, PartState.DONE.value, PartState.FAILED.value]
        confirmed = [PartState.DONE.value, PartState.SKIPPED.value]
        rows = func.coalesce(parts_t.c.row_count, 0)
        sums = (
            select(
                parts_t.c.job_id,
                func.sum(case((parts_t.c.state.in_(sent), rows), else_=0)),
                func.sum(case((parts_t.c.state.in_(confirmed), rows), else_=0)),
                func.sum(case((parts_t.c.state == PartState.FAILED.value, rows), else_=0)),
            )
            .where(parts_t.c.job_id.in_(ids))
            .group_by(parts_t.c.job_id)
        )
        async with self.read_engine.connect() as conn:
            base = (
                await conn.execute(select(progress_t).where(progress_t.c.job_id.in_(ids)))
            ).fetchall()
            counted = {
                int(j): (int(a), int(b), int(c)) for j, a, b, c in (await conn.execute(sums)).all()
            }
        out = {}
        for r in base:
            m = r._mapping
            s_, c_, f_ = counted.get(int(m["job_id"]), (0, 0, 0))
            out[int(m["job_id"])] = ImportProgress(
                job_id=int(m["job_id"]),
                phase=str(m["phase"]),
                rows_validated=int(m["rows_validated"]),
                rows_sent=s_,
                rows_confirmed=c_,
                rows_rejected=int(m["rows_rejected"]) + f_,
                rejects_path=m["rejects_path"],
                rejects=tuple(str(m["rejects"] or "").splitlines()),
                source_size=m["source_size"],
                source_mtime_ns=m["source_mtime_ns"],
                rate=m["rate"],
            )
        return out

    async def part_send_times(self, provider: str, since: float) -> list[float]:
        """Epoch seconds at which this provider's parts were sent (parts named `sent:<ms>`,
        clariBI generations), since `since`."""
        stmt = (
            select(parts_t.c.name)
            .join(jobs_t, jobs_t.c.id == parts_t.c.job_id)
            .where(
                jobs_t.c.provider == provider,
                parts_t.c.name.like("sent:%"),
                parts_t.c.state != PartState.PENDING.value,
                parts_t.c.updated_at >= _naive(datetime.fromtimestamp(since, UTC)),
            )
        )
        async with self.read_engine.connect() as conn:
            names = (await conn.execute(stmt)).scalars().all()
        out = []
        for name in names:
            with contextlib.suppress(ValueError):
                t = int(str(name).split(":", 1)[1]) / 1000.0
                if t >= since:
                    out.append(t)
        return out

    async def recent_credits(self, pipeline: str, limit: int = 10) -> list[int]:
        """Credits the pipeline's latest parts consumed, newest first (for estimates)."""
        stmt = (
            select(parts_t.c.credits)
            .join(jobs_t, jobs_t.c.id == parts_t.c.job_id)
            .where(jobs_t.c.pipeline == pipeline, parts_t.c.credits.is_not(None))
            .order_by(parts_t.c.updated_at.desc())
            .limit(limit)
        )
        async with self.read_engine.connect() as conn:
            return [int(c) for c in (await conn.execute(stmt)).scalars().all()]

    def _job_select(self) -> Any:
        return select(
            jobs_t, results_t.c.path, results_t.c.bytes, results_t.c.sha256, results_t.c.rows
        ).select_from(jobs_t.outerjoin(results_t, results_t.c.job_id == jobs_t.c.id))

    async def get(self, job_id: int) -> Job | None:
        async with self.read_engine.connect() as conn:
            row = (await conn.execute(self._job_select().where(jobs_t.c.id == job_id))).first()
        return row_to_job(row) if row is not None else None

    async def get_many(self, ids: Sequence[int]) -> dict[int, Job]:
        out: dict[int, Job] = {}
        async with self.read_engine.connect() as conn:
            for start in range(0, len(ids), 500):
                chunk = list(ids[start : start + 500])
                stmt = self._job_select().where(jobs_t.c.id.in_(chunk))
                for row in (await conn.execute(stmt)).fetchall():
                    job = row_to_job(row)
                    out[job.id] = job
        return out

    async def iter_in_flight(self, chunk: int = 500) -> AsyncIterator[list[Job]]:
        """Jobs in SUBMITTING/RUNNING/FETCHING, a chunk at a time (bounded memory at start)."""
        last = 0
        while True:
            stmt = (
                self._job_select()
                .where(jobs_t.c.state.in_([s.value for s in IN_FLIGHT]), jobs_t.c.id > last)
                .order_by(jobs_t.c.id)
                .limit(chunk)
            )
            async with self.read_engine.connect() as conn:
                rows = (await conn.execute(stmt)).fetchall()
            if not rows:
                return
            jobs = [row_to_job(r) for r in rows]
            last = jobs[-1].id
            yield jobs

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

    async def pending_heads(self, per_pipeline: int, exclude: set[int]) -> list[Job]:
        """The oldest PENDING jobs of each pipeline, at most `per_pipeline` each (not cancelled,
        not in `exclude`): enough for a fair dispatch round without reading the whole backlog."""
        ranked = (
            select(
                jobs_t.c.id,
                func.row_number()
                .over(partition_by=jobs_t.c.pipeline, order_by=jobs_t.c.id)
                .label("rank"),
            )
            .where(
                jobs_t.c.state == JobState.PENDING.value,
                jobs_t.c.cancel_requested.is_(False),
            )
            .subquery()
        )
        limit = per_pipeline + len(exclude)
        stmt = (
            self._job_select()
            .join(ranked, ranked.c.id == jobs_t.c.id)
            .where(ranked.c.rank <= limit)
            .order_by(jobs_t.c.id)
        )
        async with self.read_engine.connect() as conn:
            rows = (await conn.execute(stmt)).fetchall()
        jobs = [row_to_job(r) for r in rows if r.id not in exclude]
        counts: dict[str, int] = {}
        out = []
        for job in jobs:
            counts[job.pipeline] = counts.get(job.pipeline, 0) + 1
            if counts[job.pipeline] <= per_pipeline:
                out.append(job)
        return out

    async def due_retries(self, now: datetime) -> list[Job]:
        """RETRY_WAIT jobs whose wait is over."""
        stmt = (
            self._job_select()
            .where(
                jobs_t.c.state == JobState.RETRY_WAIT.value,
                (jobs_t.c.next_attempt_at.is_(None)) | (jobs_t.c.next_attempt_at <= _naive(now)),
            )
            .order_by(jobs_t.c.id)
        )
        async with self.read_engine.connect() as conn:
            return [row_to_job(r) for r in (await conn.execute(stmt)).fetchall()]

    def _to_stop_select(self, now: datetime) -> Any:
        # Two arms, each answered from its partial index (ix_jobs_cancel_requested,
        # ix_jobs_deadline); `= true()` renders `= 1` as the index condition is written. One
        # query with an OR would walk every RUNNING job instead.
        running = jobs_t.c.state == JobState.RUNNING.value
        cancelled = self._job_select().where(running, jobs_t.c.cancel_requested == true())
        overdue = self._job_select().where(running, jobs_t.c.deadline_at <= _naive(now))
        return union(cancelled, overdue)

    async def running_to_stop(self, now: datetime) -> list[Job]:
        """RUNNING jobs a user asked to cancel, or past their deadline."""
        stmt = self._to_stop_select(now)
        async with self.read_engine.connect() as conn:
            return [row_to_job(r) for r in (await conn.execute(stmt)).fetchall()]

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

    async def counts_by_kind(self) -> dict[tuple[str, str, str], int]:
        stmt = select(jobs_t.c.provider, jobs_t.c.kind, jobs_t.c.state, func.count()).group_by(
            jobs_t.c.provider, jobs_t.c.kind, jobs_t.c.state
        )
        async with self.read_engine.connect() as conn:
            return {(p, k, s): int(n) for p, k, s, n in (await conn.execute(stmt)).all()}

    async def quota_times(self, provider: str, since: datetime) -> list[datetime]:
        stmt = select(quota_t.c.at).where(
            quota_t.c.provider == provider,
            quota_t.c.refunded.is_(False),
            quota_t.c.at > _naive(since),
        )
        async with self.read_engine.connect() as conn:
            rows = (await conn.execute(stmt)).scalars().all()
        return [_aware(t) for t in rows if t is not None]  # type: ignore[misc]

    async def in_flight_count(self, provider: str, exclude_kinds: Sequence[str] = ()) -> int:
        """Jobs holding a remote slot: SUBMITTING and RUNNING (queued+running at the provider)"""
        stmt = select(func.count()).where(
            jobs_t.c.provider == provider,
            jobs_t.c.state.in_([JobState.SUBMITTING.value, JobState.RUNNING.value]),
        )
        if exclude_kinds:
            stmt = stmt.where(jobs_t.c.kind.not_in(list(exclude_kinds)))
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


def _row_to_part(row: Any) -> Part:
    m = row._mapping
    return Part(
        job_id=m["job_id"],
        seq=m["seq"],
        state=PartState(m["state"]),
        name=m["name"],
        remote_id=m["remote_id"],
        first_row=m["first_row"],
        row_count=m["row_count"],
        content_sha256=m["content_sha256"],
        path=m["path"],
        bytes=m["bytes"],
        sha256=m["sha256"],
        detail=m["detail"],
        credits=m["credits"],
        byte_start=m["byte_start"],
        byte_end=m["byte_end"],
        first_line=m["first_line"],
        last_line=m["last_line"],
    )


def part_to_dict(part: Part) -> dict[str, Any]:
    return {
        "seq": part.seq,
        "state": part.state.value,
        "name": part.name,
        "remote_id": part.remote_id,
        "first_row": part.first_row,
        "row_count": part.row_count,
        "path": part.path,
        "bytes": part.bytes,
        "sha256": part.sha256,
        "detail": part.detail,
        "credits": part.credits,
        "first_line": part.first_line,
        "last_line": part.last_line,
    }


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
