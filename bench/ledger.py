"""Benchmark 2: durable ledger transitions per second, grouped (the daemon's write path) vs one
transaction per transition through the async ORM (the naive path), same database settings; and
the grouped path on PostgreSQL (a scratch database on 127.0.0.1:5432), same run."""

from __future__ import annotations

import asyncio
import sqlite3
import time

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bench.common import scratch
from orchestrator.domain import JobState
from orchestrator.ledger import migrate
from orchestrator.ledger.models import JobRow, TransitionRow
from orchestrator.ledger.store import Ledger, utcnow

CONCURRENCY = 64


async def _ledger(url: str, n: int) -> tuple[Ledger, list[int]]:
    lg = Ledger(url)
    await migrate.upgrade(lg)
    await lg.start()
    ids = []
    for start in range(0, n, 1000):
        ids += await asyncio.gather(
            *(
                lg.enqueue(
                    pipeline="p",
                    kind="clari.forecast_export",
                    provider="clari",
                    params={},
                    idempotency_key=f"k{i}",
                    fire_time=None,
                    max_attempts=3,
                )
                for i in range(start, min(n, start + 1000))
            )
        )
    return lg, [i for i in ids if i is not None]


def _sqlite_url(tmp: str) -> str:
    return f"sqlite+aiosqlite:///{tmp}/ledger.db"


async def _grouped_on(url: str, n: int) -> float:
    lg, ids = await _ledger(url, n)
    if not lg.is_sqlite:
        # Statistics, as autovacuum would have them within a minute, so the figure does not
        # depend on whether its first ANALYZE of the fresh tables has run yet.
        await lg.run_write(lambda conn: conn.exec_driver_sql("ANALYZE"))
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(job_id: int) -> None:
        async with sem:
            await lg.transition(job_id, JobState.PENDING, JobState.SUBMITTING, quota="clari")

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in ids))
    rate = len(ids) / (time.perf_counter() - t0)
    await lg.close()
    return rate


async def grouped(n: int) -> float:
    with scratch() as d:
        return await _grouped_on(_sqlite_url(d), n)


def grouped_postgres(n: int, driver: str = "asyncpg") -> float | None:
    """The same grouped path on a PostgreSQL scratch database; None if no server answers."""
    from orchestrator.ledger import testing as pg

    try:
        server = pg.admin_conninfo()
    except pg.NoServer:
        return None
    with pg.scratch_database(server, prefix="orch_bench") as url:
        return asyncio.run(_grouped_on(url.replace("postgresql://", f"postgresql+{driver}://"), n))


async def naive(n: int) -> float:
    """Each transition: load the row through the ORM, change it, add a transition row, commit."""
    with scratch() as d:
        lg, ids = await _ledger(_sqlite_url(d), n)
        sem = asyncio.Semaphore(CONCURRENCY)
        # BEGIN IMMEDIATE, as the daemon's writer: with deferred transactions, concurrent ORM
        # sessions deadlock on the lock upgrade and fail with "database is locked".
        engine = lg._engine(write=True)

        async def one(job_id: int) -> None:
            async with sem, AsyncSession(engine) as session:
                job = (
                    await session.execute(select(JobRow).where(JobRow.id == job_id))
                ).scalar_one()
                job.state = JobState.SUBMITTING.value
                now = utcnow().replace(tzinfo=None)
                session.add(
                    TransitionRow(
                        job_id=job_id, from_state="PENDING", to_state="SUBMITTING", at=now
                    )
                )
                await session.commit()

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in ids))
        rate = len(ids) / (time.perf_counter() - t0)
        await engine.dispose()
        await lg.close()
        return rate


def raw_sqlite(n: int) -> dict[str, float]:
    """The ceiling: plain sqlite3, WAL, synchronous=FULL: one insert per commit, and batched."""
    with scratch() as d:
        con = sqlite3.connect(f"{d}/raw.db", isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        t0 = time.perf_counter()
        for _ in range(n):
            con.execute("BEGIN IMMEDIATE")
            con.execute("INSERT INTO t (v) VALUES ('x')")
            con.execute("COMMIT")
        single = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        con.execute("BEGIN IMMEDIATE")
        con.executemany("INSERT INTO t (v) VALUES (?)", (("x",) for _ in range(n * 10)))
        con.execute("COMMIT")
        batched = n * 10 / (time.perf_counter() - t0)
        con.close()
        return {"raw_commits_per_s": single, "raw_batched_inserts_per_s": batched}


def run(n: int = 5000) -> dict[str, float | None]:
    g = asyncio.run(grouped(n))
    nv = asyncio.run(naive(min(n, 2000)))
    return {
        "grouped_per_s": g,
        "naive_orm_per_s": nv,
        "speedup": g / nv,
        **raw_sqlite(2000),
        "grouped_postgres_asyncpg_per_s": grouped_postgres(n, "asyncpg"),
        "grouped_postgres_psycopg_per_s": grouped_postgres(n, "psycopg"),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
