"""The ledger contract, run against real SQLite and real PostgreSQL (both async drivers):
migrations match the models, group commit, idempotency, and every query."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, text
from sqlalchemy.dialects import sqlite

from orchestrator.domain import JobState, Part, PartState, StaleState
from orchestrator.ledger import migrate
from orchestrator.ledger import testing as pg_testing
from orchestrator.ledger.models import Base
from orchestrator.ledger.store import Ledger, ledger_url, utcnow

# The ledger URL forms under test: every test taking `ledger` runs once per form.
DIALECTS = ["sqlite", "postgresql+asyncpg", "postgresql+psycopg"]


def _url(request: pytest.FixtureRequest, tmp_path: Path, dialect: str) -> str:
    if dialect == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/l.db"
    # One database per module (creating one per test would cost more than the tests).
    base: str = request.getfixturevalue("postgres_url")
    return base.replace("postgresql://", f"{dialect}://", 1)


def _empty_all_tables(conn: Connection) -> None:
    names = ", ".join(t.name for t in Base.metadata.sorted_tables)
    conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=DIALECTS)
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Ledger]:
    lg = Ledger(_url(request, tmp_path, request.param))
    await migrate.upgrade(lg)
    if not lg.is_sqlite:
        await lg.run_write(_empty_all_tables)
    await lg.start()
    yield lg
    await lg.close()


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_migrations_on_an_empty_database_match_the_models(
    request: pytest.FixtureRequest, tmp_path: Path, dialect: str
) -> None:
    """`db upgrade` on a database that has never seen the orchestrator; then Alembic's own
    comparison of the models with the database finds no difference."""

    def diff(conn: Connection) -> list[object]:
        return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))

    async def check(url: str) -> None:
        lg = Ledger(url)
        try:
            assert not await migrate.is_current(lg)
            await migrate.upgrade(lg)
            async with lg.read_engine.connect() as conn:
                assert await conn.run_sync(diff) == []
            assert await migrate.is_current(lg)
            await migrate.upgrade(lg)  # at head already: nothing to do, no error
        finally:
            await lg.close()

    if dialect == "sqlite":
        await check(f"sqlite+aiosqlite:///{tmp_path}/fresh.db")
        return
    server: str = request.getfixturevalue("postgres_server")
    with pg_testing.scratch_database(server) as url:
        await check(url.replace("postgresql://", f"{dialect}://", 1))


def test_ledger_urls_name_an_async_driver() -> None:
    sqlite_url = "sqlite+aiosqlite:////var/lib/orchestrator/ledger.db"
    assert ledger_url(sqlite_url) == sqlite_url
    assert ledger_url("postgresql://u:p@db:5432/l") == "postgresql+asyncpg://u:p@db:5432/l"
    for form in ("postgresql+asyncpg://u@db/l", "postgresql+psycopg://u@db/l"):
        assert ledger_url(form) == form
    with pytest.raises(ValueError, match=r"postgresql\+asyncpg://"):
        ledger_url("postgresql+psycopg2://u@db/l")


async def enqueue(ledger: Ledger, key: str) -> int | None:
    return await ledger.enqueue(
        pipeline="p",
        kind="clari.forecast_export",
        provider="clari",
        params={"forecastId": "x"},
        idempotency_key=key,
        fire_time=None,
        max_attempts=3,
    )


async def test_enqueue_is_idempotent_per_key(ledger: Ledger) -> None:
    first = await enqueue(ledger, "sched:p:2026-11-22T06:00:00Z")
    again = await enqueue(ledger, "sched:p:2026-11-22T06:00:00Z")
    assert first is not None and again is None


async def test_concurrent_transitions_are_grouped_and_all_durable(ledger: Ledger) -> None:
    ids = await asyncio.gather(*(enqueue(ledger, f"k{i}") for i in range(300)))
    batches_before = ledger.batches
    await asyncio.gather(
        *(
            ledger.transition(i, JobState.PENDING, JobState.SUBMITTING, quota="clari")
            for i in ids
            if i
        )
    )
    assert ledger.batches - batches_before < 300 / 5  # many transitions per commit
    counts = await ledger.counts_by_state()
    assert counts == {"SUBMITTING": 300}
    assert len(await ledger.transitions(ids[0] or 0)) == 2


async def test_a_stale_transition_fails_alone(ledger: Ledger) -> None:
    a, b = await enqueue(ledger, "a"), await enqueue(ledger, "b")
    assert a and b
    results = await asyncio.gather(
        ledger.transition(a, JobState.RUNNING, JobState.FETCHING),  # wrong source state
        ledger.transition(b, JobState.PENDING, JobState.SUBMITTING),
        return_exceptions=True,
    )
    assert isinstance(results[0], StaleState)
    assert results[1] is None
    job_a, job_b = await ledger.get(a), await ledger.get(b)
    assert job_a and job_a.state == JobState.PENDING
    assert job_b and job_b.state == JobState.SUBMITTING


async def test_quota_refund(ledger: Ledger) -> None:
    job = await enqueue(ledger, "q")
    assert job
    await ledger.transition(job, JobState.PENDING, JobState.SUBMITTING, quota="clari")
    assert len(await ledger.quota_times("clari", utcnow() - timedelta(days=30))) == 1
    await ledger.transition(job, JobState.SUBMITTING, JobState.PENDING, refund_quota=True)
    assert await ledger.quota_times("clari", utcnow() - timedelta(days=30)) == []


def test_head_revision_without_alembic_matches_alembic() -> None:
    from alembic.script import ScriptDirectory

    assert (
        migrate.head_revision()
        == ScriptDirectory.from_config(migrate.alembic_config()).get_current_head()
    )


async def _running(ledger: Ledger, key: str, **values: object) -> int:
    job_id = await enqueue(ledger, key)
    assert job_id is not None
    await ledger.transition(job_id, JobState.PENDING, JobState.SUBMITTING)
    await ledger.transition(
        job_id, JobState.SUBMITTING, JobState.RUNNING, remote_id=f"r-{key}", **values
    )
    return job_id


async def test_running_to_stop_finds_cancel_requests_and_passed_deadlines(
    ledger: Ledger,
) -> None:
    now = utcnow()
    plain = await _running(ledger, "plain")
    later = await _running(ledger, "later", deadline_at=now + timedelta(hours=1))
    overdue = await _running(ledger, "overdue", deadline_at=now - timedelta(seconds=1))
    cancel = await _running(ledger, "cancel")
    both = await _running(ledger, "both", deadline_at=now - timedelta(minutes=5))
    for job_id in (cancel, both):
        assert await ledger.request_cancel(job_id) == JobState.RUNNING
    done = await _running(ledger, "done", deadline_at=now - timedelta(minutes=5))
    await ledger.request_cancel(done)
    await ledger.transition(done, JobState.RUNNING, JobState.CANCELLED)

    found = sorted(j.id for j in await ledger.running_to_stop(now))
    assert found == sorted([overdue, cancel, both])
    assert plain not in found and later not in found


async def test_the_look_for_jobs_to_stop_reads_only_index_entries(
    ledger: Ledger, tmp_path: Path
) -> None:
    """With 100,000 jobs in flight, a scan of the RUNNING rows took 20 ms twice a second; the
    query must be answered from the two partial indexes, never by scanning jobs."""
    stmt = ledger._to_stop_select(utcnow())
    if not ledger.is_sqlite:
        # An empty table is cheapest to scan; with scans priced out, the planner must still
        # find both partial indexes usable (their conditions match what the query says).
        async with ledger.read_engine.connect() as conn:
            await conn.execute(text("SET enable_seqscan = off"))
            sql = stmt.compile(conn.sync_connection, compile_kwargs={"literal_binds": True})
            plan = "\n".join((await conn.execute(text(f"EXPLAIN {sql}"))).scalars())
        assert "ix_jobs_cancel_requested" in plan and "ix_jobs_deadline" in plan, plan
        assert "Seq Scan on jobs" not in plan, plan
        return
    compiled = stmt.compile(dialect=sqlite.dialect())
    params = [
        str(v) if isinstance(v, datetime) else v
        for v in (compiled.params[k] for k in compiled.positiontup or [])
    ]
    con = sqlite3.connect(tmp_path / "l.db")
    try:
        plan = [row[-1] for row in con.execute(f"EXPLAIN QUERY PLAN {compiled}", params)]
    finally:
        con.close()
    jobs_steps = [p for p in plan if " jobs" in p]
    assert any("ix_jobs_cancel_requested" in p for p in jobs_steps), plan
    assert any("ix_jobs_deadline" in p for p in jobs_steps), plan
    assert not any(p.startswith("SCAN jobs") for p in jobs_steps), plan


async def test_every_query_answers_the_same_on_every_dialect(ledger: Ledger) -> None:
    """One small history, then each of the ledger's reads: what the daemon, the CLI and the
    status page ask must answer alike on SQLite and PostgreSQL (types, times, JSON, NULLs)."""
    now = utcnow()
    fired = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)
    sched = await ledger.enqueue(
        pipeline="q",
        kind="claro.dataset_export",
        provider="claro",
        params={"dataset": "d1", "nested": {"a": [1, 2]}},
        idempotency_key=f"sched:q:{fired.isoformat()}",
        fire_time=fired,
        max_attempts=2,
    )
    assert sched is not None
    done = await _running(ledger, "done", deadline_at=now + timedelta(hours=1))
    await ledger.update_fields(
        done, polls=3, submitted_at=now, remote_done_at=now + timedelta(seconds=90)
    )
    await ledger.transition(done, JobState.RUNNING, JobState.FETCHING)
    result = {"path": "/r/done.csv", "bytes": 12, "sha256": "ab" * 32, "rows": 2}
    await ledger.transition(done, JobState.FETCHING, JobState.SUCCEEDED, result=result)
    waiting = await _running(ledger, "wait")
    await ledger.transition(
        waiting,
        JobState.RUNNING,
        JobState.RETRY_WAIT,
        error="HTTP 503",
        next_attempt_at=now - timedelta(seconds=1),
    )
    sent_ms = int(now.timestamp() * 1000)
    await ledger.save_parts(
        [
            Part(job_id=sched, seq=0, state=PartState.DONE, content_sha256="c0", credits=4),
            Part(job_id=sched, seq=1, state=PartState.SENDING, name=f"sent:{sent_ms}"),
            Part(job_id=sched, seq=2, state=PartState.RUNNING, remote_id="part-r2"),
        ]
    )
    await ledger.save_parts([Part(job_id=sched, seq=2, state=PartState.DONE, remote_id="r2")])

    got = await ledger.get(done)
    assert got is not None and got.state == JobState.SUCCEEDED
    assert got.finished_at is not None and got.finished_at.tzinfo is not None
    assert (got.result_path, got.result_bytes, got.result_rows) == ("/r/done.csv", 12, 2)
    assert abs((got.created_at - now).total_seconds()) < 60
    first = await ledger.get(sched)
    assert first is not None and first.params == {"dataset": "d1", "nested": {"a": [1, 2]}}
    assert first.fire_time == fired and not first.cancel_requested
    assert await ledger.get(10_000) is None
    assert set(await ledger.get_many([sched, done, 10_000])) == {sched, done}
    assert [j.id for j in await ledger.list_jobs(oldest_first=True)] == [sched, done, waiting]
    assert [j.id for j in await ledger.list_jobs(states=[JobState.PENDING], pipeline="q")] == [
        sched
    ]
    assert [j.id for j in await ledger.list_jobs(provider="clari", limit=1, offset=1)] == [done]
    assert [j.id for j in await ledger.pending_heads(5, exclude=set())] == [sched]
    assert await ledger.pending_heads(5, exclude={sched}) == []
    assert [j.id for j in await ledger.due_retries(now)] == [waiting]
    assert await ledger.due_retries(now - timedelta(minutes=1)) == []
    assert [t["to"] for t in await ledger.transitions(done)] == [
        "PENDING",
        "SUBMITTING",
        "RUNNING",
        "FETCHING",
        "SUCCEEDED",
    ]
    assert str(next(iter(await ledger.transitions(done)))["at"]).endswith("Z")
    assert await ledger.counts_by_state() == {"PENDING": 1, "SUCCEEDED": 1, "RETRY_WAIT": 1}
    assert await ledger.counts_by_kind() == {
        ("claro", "claro.dataset_export", "PENDING"): 1,
        ("clari", "clari.forecast_export", "SUCCEEDED"): 1,
        ("clari", "clari.forecast_export", "RETRY_WAIT"): 1,
    }
    assert await ledger.in_flight_count("clari") == 0
    assert await ledger.known_remote_ids("clari") == {"r-done", "r-wait"}
    assert await ledger.durations("p") == [pytest.approx(90)]
    assert await ledger.last_fire_time("q") == fired
    assert await ledger.last_fire_time("p") is None
    assert await ledger.has_unfinished()
    assert await ledger.in_flight() == []
    assert [chunk async for chunk in ledger.iter_in_flight()] == []

    parts = await ledger.parts(sched)
    assert [(p.seq, p.state, p.remote_id) for p in parts] == [
        (0, PartState.DONE, None),
        (1, PartState.SENDING, None),
        (2, PartState.DONE, "r2"),
    ]
    assert set(await ledger.done_content("q", ["c0", "c9"])) == {"c0"}
    assert await ledger.done_content("p", ["c0"]) == {}
    assert await ledger.credits_used("claro", now - timedelta(days=1)) == 4
    assert await ledger.credits_used("clari", now - timedelta(days=1)) == 0
    assert await ledger.part_remote_ids("claro") == {"r2"}
    assert await ledger.part_progress([sched, done]) == {sched: (2, 3)}
    assert await ledger.part_progress([]) == {}
    assert await ledger.part_send_times("claro", now.timestamp() - 60) == [sent_ms / 1000]
    assert await ledger.recent_credits("q") == [4]
    assert await ledger.ping()

    live = await _running(ledger, "live", deadline_at=now - timedelta(seconds=1))
    assert [j.id for j in await ledger.in_flight()] == [live]
    assert [[j.id for j in chunk] async for chunk in ledger.iter_in_flight(chunk=1)] == [[live]]
    assert await ledger.in_flight_count("clari") == 1
    assert await ledger.in_flight_count("clari", exclude_kinds=["clari.forecast_export"]) == 0
    assert [j.id for j in await ledger.running_to_stop(now)] == [live]
    assert await ledger.request_cancel(sched) == JobState.CANCELLED
    with pytest.raises(KeyError):
        await ledger.request_cancel(10_000)


@pytest.mark.parametrize("dialect", ["postgresql+asyncpg", "postgresql+psycopg"])
async def test_an_upgrade_waits_for_one_in_progress_on_postgresql(
    postgres_server: str, dialect: str
) -> None:
    """Two commands started together on a new ledger (every command migrates first): the
    second waits for the first's schema, then finds it current, instead of creating the same
    tables and failing on the duplicate when the first commits."""
    with pg_testing.scratch_database(postgres_server) as base:
        url = base.replace("postgresql://", f"{dialect}://", 1)
        first, second = Ledger(url), Ledger(url)
        try:
            async with first._writer.writes.engine.begin() as conn:  # type: ignore[attr-defined]
                await conn.run_sync(migrate._upgrade)  # created, not yet committed
                waiting = asyncio.create_task(migrate.upgrade(second))
                await asyncio.sleep(0.5)
                assert not waiting.done()
            await asyncio.wait_for(waiting, 10)
            assert await migrate.is_current(second)
        finally:
            await first.close()
            await second.close()


async def test_aware_times_in_any_zone_compare_as_utc_in_queries(ledger: Ledger) -> None:
    """A query written with an aware datetime (here UTC+02:00) must mean the same instant on
    every database: asyncpg refuses aware values for `timestamp` columns, SQLite would compare
    the local wall time."""
    from datetime import timezone

    from sqlalchemy import select

    from orchestrator.ledger.store import jobs_t

    fired = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)
    job = await ledger.enqueue(
        pipeline="p",
        kind="clari.forecast_export",
        provider="clari",
        params={},
        idempotency_key="tz",
        fire_time=fired,
        max_attempts=1,
    )
    same_instant = fired.astimezone(timezone(timedelta(hours=2)))
    async with ledger.read_engine.connect() as conn:
        found = (
            await conn.execute(select(jobs_t.c.id).where(jobs_t.c.fire_time == same_instant))
        ).scalars()
        assert list(found) == [job]


async def test_no_registered_secret_is_stored_in_errors_reasons_or_part_details(
    ledger: Ledger,
) -> None:
    """The ledger's own safety net: text built anywhere (a part detail, a reason) is redacted in
    every encoding before it is written, even where its builder forgot."""
    import base64
    import json as json_module
    from urllib.parse import quote

    from orchestrator import redaction

    secret = "ledger-secret-Vb7Qx2Lm/+="
    redaction.register([secret])  # stays registered: harmless, nothing else uses it
    job = await enqueue(ledger, "redact")
    assert job
    echoed = [
        secret,
        quote(secret, safe=""),
        json_module.dumps(secret)[1:-1],
        base64.b64encode(f"user:{secret}".encode()).decode(),
    ]
    await ledger.transition(
        job,
        JobState.PENDING,
        JobState.SUBMITTING,
        reason=f"attempt 1 {echoed[1]}",
        error=" | ".join(echoed),
    )
    await ledger.save_parts(
        [Part(job_id=job, seq=0, state=PartState.FAILED, detail=f"400 {echoed[3]}")]
    )
    stored = await ledger.get(job)
    assert stored is not None and stored.error is not None
    details = [p.detail or "" for p in await ledger.parts(job)]
    history = await ledger.transitions(job)
    texts = [stored.error, *details, *(t["reason"] or "" for t in history)]
    assert redaction.MASK in stored.error and redaction.MASK in details[0]
    for text_ in texts:
        for form in echoed:
            assert form not in text_
