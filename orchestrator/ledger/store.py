"""Async repository over the ledger.

Writes go through one writer task that commits whatever operations are ready as a group: callers
await their own operation's durability, but many operations share one transaction and one
thread hop (DESIGN.md "Performance shape": ~10,000 transitions/s instead of ~500/s). Reads use
their own engine and never hold the write lock.

Two dialects, one contract: below the writer, SQLite runs each group on one thread through the
sqlite3 cursor (ledger/dialects/sqlite.py, the raw fast path); PostgreSQL runs it on the URL's
own async driver (ledger/dialects/postgresql.py), each operation one prebuilt statement. The
writer itself is ledger/writer.py, the tables and row mapping ledger/rows.py, replica leases
ledger/leases.py. Queries are Core and portable, here.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import structlog
from sqlalchemy import (
    Connection,
    case,
    delete,
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
    ImportProgress,
    Job,
    JobState,
    Part,
    PartState,
    PipelineRuns,
)
from orchestrator.ledger import dialects
from orchestrator.ledger.dialects import postgresql, sqlite
from orchestrator.ledger.rows import (
    _DATETIME_FIELDS,
    _aware,
    _naive,
    j2,
    notify_t,
    ops_t,
    parts_t,
    progress_t,
    quota_t,
    remote_jobs_t,
    results_t,
    row_to_job,
    transitions_t,
)
from orchestrator.ledger.rows import (
    jobs_t as jobs_t,
)
from orchestrator.ledger.rows import (
    utcnow as utcnow,
)
from orchestrator.ledger.writer import GroupWriter
from orchestrator.redaction import redact

log = structlog.get_logger(__name__)
T = TypeVar("T")


def ledger_url(url: str) -> str:
    """The URL the ledger connects with. SQLite: `sqlite+aiosqlite://`. PostgreSQL: an async
    driver, `postgresql+asyncpg://` or `postgresql+psycopg://` (one of them suffices); a bare
    `postgresql://` means asyncpg, and a sync-only driver is refused here, not at first use."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return url
    driver = parsed.get_driver_name()
    if "+" not in parsed.drivername:
        parsed = parsed.set(drivername="postgresql+asyncpg")
    elif driver not in ("asyncpg", "psycopg"):
        raise ValueError(
            f"ledger url: driver {driver!r} is not asynchronous; "
            "use postgresql+asyncpg://… or postgresql+psycopg://…"
        )
    return parsed.render_as_string(hide_password=False)


class Ledger:
    def __init__(self, url: str) -> None:
        self.url = ledger_url(url)
        self.is_sqlite = make_url(self.url).get_backend_name() == "sqlite"
        if self.is_sqlite:
            self._ensure_sqlite_dir()
        self._writer = GroupWriter(
            sqlite.SqliteWrites(self.url) if self.is_sqlite else postgresql.AsyncWrites(self.url)
        )
        self.read_engine = self._engine(write=False)

    # --- engines ----------------------------------------------------------------------------
    def _ensure_sqlite_dir(self) -> None:
        db = make_url(self.url).database
        if db and db != ":memory:":
            # Its directory 0700, the file 0600, before SQLite opens it.
            sqlite.create_private(Path(db))

    async def run_write(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn` in one write transaction of its own, on the writer's connection."""
        return await self._writer.writes.run(fn)

    def _engine(self, *, write: bool) -> AsyncEngine:
        if not self.is_sqlite:
            return create_async_engine(self.url, pool_pre_ping=True)
        engine = create_async_engine(self.url, pool_size=4, max_overflow=4)
        sqlite.setup_engine(engine.sync_engine, "BEGIN IMMEDIATE" if write else "BEGIN", wal=write)
        return engine

    async def start(self) -> None:
        await self._writer.start()

    async def close(self) -> None:
        await self._writer.close()
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

    # --- the group-commit writer (ledger/writer.py) -----------------------------------------
    @property
    def batches(self) -> int:
        return self._writer.batches

    @property
    def ops(self) -> int:
        return self._writer.ops

    @property
    def on_commit(self) -> Callable[[float], None] | None:
        return self._writer.on_commit

    @on_commit.setter
    def on_commit(self, observe: Callable[[float], None] | None) -> None:
        self._writer.on_commit = observe

    async def _submit(self, apply: Callable[[Connection], Any]) -> Any:
        return await self._writer.submit(apply)

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
                cur = sqlite._cursor(conn)
                cols = ", ".join(row)
                marks = ", ".join("?" for _ in row)
                cur.execute(
                    f"INSERT INTO jobs ({cols}) VALUES ({marks}) "  # noqa: S608 (fixed columns)
                    "ON CONFLICT (idempotency_key) DO NOTHING",
                    [sqlite._db(k, v) for k, v in row.items()],
                )
                if cur.rowcount != 1:
                    return None
                job_id = int(cur.lastrowid)
                cur.execute(
                    "INSERT INTO transitions (job_id, from_state, to_state, at, reason) "
                    "VALUES (?, NULL, 'PENDING', ?, ?)",
                    (job_id, sqlite._db("at", now), reason),
                )
                return job_id
            params = {k: (_naive(v) if k in _DATETIME_FIELDS else v) for k, v in row.items()}
            new_id = conn.execute(
                postgresql.enqueue_statement(tuple(row)),
                {**params, "at": _naive(now), "reason": reason},
            ).scalar()
            return None if new_id is None else int(new_id)

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
        # The last safety net for text from outside: whatever built it, no registered secret
        # (in any of its encodings) is stored in an error or a reason.
        if reason:
            reason = redact(reason)
        if isinstance(values.get("error"), str):
            values["error"] = redact(values["error"])

        def apply(conn: Connection) -> None:
            dialects.transition(conn, job_id, src, dst, reason, values, now, quota)
            if conn.dialect.name == "sqlite":
                sqlite.extras(conn, job_id, now, refund_quota, result)
                return
            if refund_quota:
                latest = (
                    select(func.max(quota_t.c.id))
                    .where(quota_t.c.job_id == job_id, quota_t.c.refunded.is_(False))
                    .scalar_subquery()
                )
                conn.execute(update(quota_t).where(quota_t.c.id == latest).values(refunded=True))
            if result is not None:
                from sqlalchemy.dialects.postgresql import insert as pg_insert

                row = {**result, "created_at": _naive(now)}
                conn.execute(
                    pg_insert(results_t)
                    .values(job_id=job_id, **row)
                    .on_conflict_do_update(index_elements=[results_t.c.job_id], set_=row)
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
                dialects.transition(
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
                "detail": redact(p.detail) if p.detail else p.detail,
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

    async def part_details_since(
        self, provider: str, kind: str, since: datetime
    ) -> list[tuple[int, dict[str, Any], str]]:
        """(job id, params, detail) of the provider's `kind` job parts saved since `since` that
        carry a detail: what other jobs already claimed (clariBI refreshes' `last_refresh`)."""
        stmt = (
            select(jobs_t.c.id, jobs_t.c.params, parts_t.c.detail)
            .join(jobs_t, jobs_t.c.id == parts_t.c.job_id)
            .where(
                jobs_t.c.provider == provider,
                jobs_t.c.kind == kind,
                parts_t.c.detail.is_not(None),
                parts_t.c.updated_at >= _naive(since),
            )
        )
        async with self.read_engine.connect() as conn:
            rows = (await conn.execute(stmt)).fetchall()
        return [(int(r.id), dict(r.params or {}), str(r.detail)) for r in rows]

    async def part_remote_ids(self, provider: str) -> set[str]:
        """Remote ids the provider's job parts already own (so recovery never adopts them)."""
        stmt = (
            select(parts_t.c.remote_id)
            .join(jobs_t, jobs_t.c.id == parts_t.c.job_id)
            .where(jobs_t.c.provider == provider, parts_t.c.remote_id.is_not(None))
        )
        async with self.read_engine.connect() as conn:
            return {str(r) for r in (await conn.execute(stmt)).scalars().all()}

    async def jobs_sending(self, provider: str) -> list[Job]:
        """Jobs of `provider` with a part whose call may have happened (SENDING): unresolved."""
        sending = select(parts_t.c.job_id).where(parts_t.c.state == PartState.SENDING.value)
        stmt = self._job_select().where(jobs_t.c.provider == provider, jobs_t.c.id.in_(sending))
        async with self.read_engine.connect() as conn:
            return [row_to_job(r) for r in (await conn.execute(stmt)).fetchall()]

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

    async def iter_in_flight(
        self, chunk: int = 500, providers: Sequence[str] | None = None
    ) -> AsyncIterator[list[Job]]:
        """Jobs in SUBMITTING/RUNNING/FETCHING (of `providers`' accounts, when given), a chunk
        at a time (bounded memory at start)."""
        last = 0
        where = [jobs_t.c.state.in_([s.value for s in IN_FLIGHT])]
        if providers is not None:
            where.append(jobs_t.c.provider.in_(providers))
        while True:
            stmt = (
                self._job_select()
                .where(*where, jobs_t.c.id > last)
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

    async def pending_heads(
        self, per_pipeline: int, exclude: set[int], providers: Sequence[str] | None = None
    ) -> list[Job]:
        """The oldest PENDING jobs of each pipeline, at most `per_pipeline` each (not cancelled,
        not in `exclude`; of `providers`' accounts only, when given: a replica's leases): enough
        for a fair dispatch round without reading the whole backlog."""
        where = [jobs_t.c.state == JobState.PENDING.value, jobs_t.c.cancel_requested.is_(False)]
        if providers is not None:
            where.append(jobs_t.c.provider.in_(providers))
        ranked = (
            select(
                jobs_t.c.id,
                func.row_number()
                .over(partition_by=jobs_t.c.pipeline, order_by=jobs_t.c.id)
                .label("rank"),
            )
            .where(*where)
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
        # query with an OR would walk every RUNNING job instead. The arms select ids only:
        # the UNION removes a job found by both, and PostgreSQL cannot compare JSON `params`.
        running = jobs_t.c.state == JobState.RUNNING.value
        cancelled = select(jobs_t.c.id).where(running, jobs_t.c.cancel_requested == true())
        overdue = select(jobs_t.c.id).where(running, jobs_t.c.deadline_at <= _naive(now))
        return self._job_select().where(jobs_t.c.id.in_(union(cancelled, overdue)))

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
        """Every remote job of `provider` a ledger job owns or ever owned (earlier attempts')."""
        stmt = union(
            select(jobs_t.c.remote_id).where(
                jobs_t.c.provider == provider, jobs_t.c.remote_id.is_not(None)
            ),
            select(remote_jobs_t.c.remote_id).where(remote_jobs_t.c.provider == provider),
        )
        async with self.read_engine.connect() as conn:
            return {r for r in (await conn.execute(stmt)).scalars().all() if r}

    async def remote_owner(self, provider: str, remote_id: str) -> int | None:
        """The ledger job that owns (or owned) a remote job, if any."""
        stmt = union(
            select(jobs_t.c.id).where(
                jobs_t.c.provider == provider, jobs_t.c.remote_id == remote_id
            ),
            select(remote_jobs_t.c.job_id).where(
                remote_jobs_t.c.provider == provider, remote_jobs_t.c.remote_id == remote_id
            ),
        )
        async with self.read_engine.connect() as conn:
            owner = (await conn.execute(stmt)).scalars().first()
        return None if owner is None else int(owner)

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

    # --- ops values and the notification outbox (notify.py) --------------------------------
    async def ops_value(self, key: str) -> str | None:
        stmt = select(ops_t.c.value).where(ops_t.c.key == key)
        async with self.read_engine.connect() as conn:
            value = (await conn.execute(stmt)).scalar()
        return None if value is None else str(value)

    async def set_ops_value(self, key: str, value: str) -> None:
        def apply(conn: Connection) -> None:
            conn.execute(delete(ops_t).where(ops_t.c.key == key))
            conn.execute(insert(ops_t).values(key=key, value=value))

        await self._submit(apply)

    async def max_transition_id(self) -> int:
        async with self.read_engine.connect() as conn:
            return int((await conn.execute(select(func.max(transitions_t.c.id)))).scalar() or 0)

    async def finished_since(self, after_id: int, limit: int = 500) -> list[dict[str, Any]]:
        """Transitions into FAILED or SUCCEEDED after transition `after_id`, oldest first, with
        their job's pipeline, kind, provider, attempts and error."""
        t, j = transitions_t, jobs_t
        stmt = (
            select(
                t.c.id.label("tid"),
                t.c.to_state,
                t.c.at,
                j.c.id,
                j.c.pipeline,
                j.c.kind,
                j.c.provider,
                j.c.attempts,
                j.c.error,
            )
            .join(j, j.c.id == t.c.job_id)
            .where(
                t.c.id > after_id,
                t.c.to_state.in_([JobState.FAILED.value, JobState.SUCCEEDED.value]),
            )
            .order_by(t.c.id)
            .limit(limit)
        )
        async with self.read_engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [{**r._mapping, "at": _aware(r.at)} for r in rows]

    async def previous_outcome(self, pipeline: str, job_id: int, before: datetime) -> str | None:
        """The state of the pipeline's latest other job that ended FAILED or SUCCEEDED before
        `before` (a success after a failure is a recovery)."""
        stmt = (
            select(jobs_t.c.state)
            .where(
                jobs_t.c.pipeline == pipeline,
                jobs_t.c.id != job_id,
                jobs_t.c.state.in_([JobState.FAILED.value, JobState.SUCCEEDED.value]),
                jobs_t.c.finished_at <= _naive(before),
            )
            .order_by(jobs_t.c.finished_at.desc(), jobs_t.c.id.desc())
            .limit(1)
        )
        async with self.read_engine.connect() as conn:
            value = (await conn.execute(stmt)).scalar()
        return None if value is None else str(value)

    async def outbox_add(self, rows: Sequence[dict[str, Any]]) -> int:
        """Add notifications whose key is new; returns how many were added."""
        if not rows:
            return 0
        now = _naive(utcnow())

        def apply(conn: Connection) -> int:
            keys = [r["key"] for r in rows]
            taken = set(
                conn.execute(select(notify_t.c.key).where(notify_t.c.key.in_(keys))).scalars()
            )
            new = [
                {
                    **r,
                    "state": "PENDING",
                    "attempts": 0,
                    "created_at": now,
                    "next_attempt_at": now,
                }
                for r in rows
                if r["key"] not in taken
            ]
            if new:  # a replica adding the same key meanwhile (an account handed over): kept
                conn.execute(dialects.insert_new(conn, notify_t, "key"), new)
            return len(new)

        return int(await self._submit(apply))

    async def outbox_due(self, now: datetime, limit: int = 50) -> list[dict[str, Any]]:
        stmt = (
            select(notify_t)
            .where(notify_t.c.state == "PENDING", notify_t.c.next_attempt_at <= _naive(now))
            .order_by(notify_t.c.id)
            .limit(limit)
        )
        async with self.read_engine.connect() as conn:
            return [dict(r._mapping) for r in (await conn.execute(stmt)).all()]

    async def outbox_update(self, row_id: int, **values: Any) -> None:
        naive = {k: _naive(v) if isinstance(v, datetime) else v for k, v in values.items()}

        def apply(conn: Connection) -> None:
            conn.execute(update(notify_t).where(notify_t.c.id == row_id).values(**naive))

        await self._submit(apply)

    async def outbox_list(self, limit: int = 100) -> list[dict[str, Any]]:
        stmt = select(notify_t).order_by(notify_t.c.id.desc()).limit(limit)
        async with self.read_engine.connect() as conn:
            return [dict(r._mapping) for r in (await conn.execute(stmt)).all()]

    async def jobs_touched_since(self, since: datetime) -> list[Job]:
        """Jobs created or moved at or after `since`, oldest first (`run --once` summary)."""
        stmt = self._job_select().where(jobs_t.c.updated_at >= _naive(since)).order_by(jobs_t.c.id)
        async with self.read_engine.connect() as conn:
            return [row_to_job(r) for r in (await conn.execute(stmt)).fetchall()]

    # --- retention (retention.py) -----------------------------------------------------------
    async def retention_rows(self, cutoff: datetime) -> list[dict[str, Any]]:
        """What retention decides on: jobs that finished before `cutoff`, every unfinished job
        (what they will read is kept) and each pipeline's newest success; with their result."""
        newest = (
            select(func.max(jobs_t.c.id))
            .where(
                jobs_t.c.state == JobState.SUCCEEDED.value,
                jobs_t.c.finished_at
                == (
                    select(func.max(j2.c.finished_at))
                    .where(
                        j2.c.pipeline == jobs_t.c.pipeline, j2.c.state == JobState.SUCCEEDED.value
                    )
                    .scalar_subquery()
                ),
            )
            .group_by(jobs_t.c.pipeline)
        )
        stmt = (
            select(
                jobs_t.c.id,
                jobs_t.c.pipeline,
                jobs_t.c.state,
                jobs_t.c.finished_at,
                jobs_t.c.params,
                results_t.c.path,
                results_t.c.bytes,
            )
            .select_from(jobs_t.outerjoin(results_t, results_t.c.job_id == jobs_t.c.id))
            .where(
                (jobs_t.c.finished_at < _naive(cutoff))
                | jobs_t.c.state.not_in([s.value for s in TERMINAL])
                | jobs_t.c.id.in_(newest)
            )
        )
        async with self.read_engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [{**r._mapping, "finished_at": _aware(r.finished_at)} for r in rows]

    async def delete_results(self, job_ids: Sequence[int]) -> None:
        """Forget these jobs' result files (retention removed them)."""
        for start in range(0, len(job_ids), 500):
            chunk = list(job_ids[start : start + 500])

            def apply(conn: Connection, chunk: list[int] = chunk) -> None:
                conn.execute(delete(results_t).where(results_t.c.job_id.in_(chunk)))

            await self._submit(apply)

    async def delete_jobs(self, job_ids: Sequence[int]) -> None:
        """Delete finished jobs with everything that names them (transitions, parts, quota
        usage, result). The caller checked they are finished."""
        for start in range(0, len(job_ids), 500):
            chunk = list(job_ids[start : start + 500])

            def apply(conn: Connection, chunk: list[int] = chunk) -> None:
                ended = select(jobs_t.c.id).where(
                    jobs_t.c.id.in_(chunk), jobs_t.c.state.in_([s.value for s in TERMINAL])
                )
                ids = list(conn.execute(ended).scalars())
                for table in (transitions_t, parts_t, quota_t, results_t):
                    conn.execute(delete(table).where(table.c.job_id.in_(ids)))
                conn.execute(delete(jobs_t).where(jobs_t.c.id.in_(ids)))

            await self._submit(apply)

    # --- pipelines (`orchestrator pipelines`, per-pipeline metrics; portable SQL) ----------
    async def taken_keys(self, keys: Sequence[str]) -> set[str]:
        """Which of these idempotency keys already name a job (backfill: fires already run)."""
        found: set[str] = set()
        async with self.read_engine.connect() as conn:
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                stmt = select(jobs_t.c.idempotency_key).where(jobs_t.c.idempotency_key.in_(chunk))
                found.update((await conn.execute(stmt)).scalars().all())
        return found

    async def queued_count(self, provider: str, kinds: Sequence[str]) -> int:
        """Jobs of these kinds waiting to be submitted (PENDING, RETRY_WAIT): quota they will
        spend that the rolling-window count does not hold yet."""
        stmt = select(func.count()).where(
            jobs_t.c.provider == provider,
            jobs_t.c.kind.in_(list(kinds)),
            jobs_t.c.state.in_([JobState.PENDING.value, JobState.RETRY_WAIT.value]),
        )
        async with self.read_engine.connect() as conn:
            return int((await conn.execute(stmt)).scalar_one())

    async def pipeline_runs(self) -> dict[str, PipelineRuns]:
        """Per pipeline in the ledger: its newest job, its last success and the failures after it.
        Three grouped queries, whatever the number of pipelines."""
        succeeded = (
            select(jobs_t.c.pipeline, func.max(jobs_t.c.finished_at).label("last_ok"))
            .where(jobs_t.c.state == JobState.SUCCEEDED.value)
            .group_by(jobs_t.c.pipeline)
            .subquery()
        )
        failures = (
            select(jobs_t.c.pipeline, func.count())
            .select_from(jobs_t.outerjoin(succeeded, succeeded.c.pipeline == jobs_t.c.pipeline))
            .where(
                jobs_t.c.state == JobState.FAILED.value,
                (succeeded.c.last_ok.is_(None)) | (jobs_t.c.finished_at > succeeded.c.last_ok),
            )
            .group_by(jobs_t.c.pipeline)
        )
        heads = select(
            jobs_t.c.pipeline, func.max(jobs_t.c.id).label("last_id"), func.min(jobs_t.c.created_at)
        ).group_by(jobs_t.c.pipeline)
        async with self.read_engine.connect() as conn:
            ok = {p: _aware(t) for p, t in (await conn.execute(select(succeeded))).all()}
            failed = {p: int(n) for p, n in (await conn.execute(failures)).all()}
            first = {p: (int(i), _aware(c)) for p, i, c in (await conn.execute(heads)).all()}
            last_ids = [i for i, _ in first.values()]
            last: dict[str, tuple[str, datetime | None]] = {}
            for start in range(0, len(last_ids), 500):
                stmt = select(jobs_t.c.pipeline, jobs_t.c.state, jobs_t.c.finished_at).where(
                    jobs_t.c.id.in_(last_ids[start : start + 500])
                )
                for p, s, f in (await conn.execute(stmt)).all():
                    last[p] = (s, _aware(f))
        return {
            p: PipelineRuns(
                pipeline=p,
                last_run_id=last_id,
                last_run_state=JobState(last[p][0]) if p in last else None,
                last_run_finished_at=last[p][1] if p in last else None,
                last_success_at=ok.get(p),
                consecutive_failures=failed.get(p, 0),
                first_created_at=created,
            )
            for p, (last_id, created) in first.items()
        }


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
