"""The ledger against real SQLite: migrations match the models, group commit, idempotency."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection
from sqlalchemy.dialects import sqlite

from orchestrator.domain import JobState, StaleState
from orchestrator.ledger import migrate
from orchestrator.ledger.models import Base
from orchestrator.ledger.store import Ledger, utcnow


@pytest.fixture
async def ledger(tmp_path: Path) -> Ledger:
    lg = Ledger(f"sqlite+aiosqlite:///{tmp_path}/l.db")
    await migrate.upgrade(lg)
    await lg.start()
    yield lg  # type: ignore[misc]
    await lg.close()


async def test_migrations_match_the_models(ledger: Ledger) -> None:
    def diff(conn: Connection) -> list[object]:
        return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))

    async with ledger.read_engine.connect() as conn:
        assert await conn.run_sync(diff) == []
    assert await migrate.is_current(ledger)


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
    from datetime import timedelta

    from orchestrator.ledger.store import utcnow

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
