"""SQLite below the group-commit writer: one thread runs each group through the sqlite3 cursor
(prepared statements cached by SQL text, values stored exactly as SQLAlchemy stores them, so
Core reads agree), and the engine setup every SQLite connection gets."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

from orchestrator.domain import JobState, StaleState
from orchestrator.ledger.rows import _DATETIME_FIELDS, _naive
from orchestrator.runtime import file_mode, make_dirs

T = TypeVar("T")

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
    """One transition on the raw sqlite3 cursor: the guarded update, its transition row, the
    quota unit and the remote id's owner row (see dialects.transition)."""
    keys = sorted(values)
    stamp = _db("at", now)
    cur = _cursor(conn)
    sets = ", ".join(["state = ?", "updated_at = ?", *(f"{k} = ?" for k in keys)])
    cur.execute(
        f"UPDATE jobs SET {sets} WHERE id = ? AND state = ?",  # noqa: S608 (column names checked)
        [dst.value, stamp, *(_db(k, values[k]) for k in keys), job_id, src.value],
    )
    if cur.rowcount != 1:
        raise StaleState(job_id, src)
    cur.execute(
        "INSERT INTO transitions (job_id, from_state, to_state, at, reason) VALUES (?, ?, ?, ?, ?)",
        (job_id, src.value, dst.value, stamp, reason),
    )
    if quota is not None:
        cur.execute(
            "INSERT INTO quota_usage (provider, job_id, at, refunded) VALUES (?, ?, ?, 0)",
            (quota, job_id, stamp),
        )
    if values.get("remote_id"):  # owned for good; a second owner fails the primary key
        # (the same job given the same id again, by a provider that answers a resubmission
        # with the id it gave before, or an operator's adopt, is no second owner)
        rid = values["remote_id"]
        cur.execute(
            "INSERT INTO remote_jobs (provider, remote_id, job_id, at) "
            "SELECT provider, ?, id, ? FROM jobs WHERE id = ? AND NOT EXISTS (SELECT 1 FROM "
            "remote_jobs r WHERE r.provider = jobs.provider AND r.remote_id = ? AND r.job_id = ?)",
            (rid, stamp, job_id, rid, job_id),
        )


def extras(
    conn: Connection,
    job_id: int,
    now: datetime,
    refund: bool,
    result: dict[str, Any] | None,
) -> None:
    """The rows that ride along with a transition (refund, result), raw SQLite."""
    cur = _cursor(conn)
    stamp = _db("at", now)
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


def setup_engine(engine: Engine, begin: str, *, wal: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # We issue BEGIN ourselves (below), so the driver must not.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        # First: switching a new file to WAL waits for a lock that another process's first
        # migration (alembic imported under it: seconds) may hold past sqlite3's default 5 s.
        cur.execute("PRAGMA busy_timeout=15000")
        if wal:  # persistent in the file; only the writer needs to set it
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
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


def create_private(db: Path) -> None:
    """The SQLite file made with an explicit mode (0600 unless [daemon] umask says otherwise)
    before SQLite makes it 0644 less the umask; its -wal and -shm files copy the mode."""
    if db.exists():
        return
    make_dirs(db.parent)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(db, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, file_mode()))


class SqliteWrites:
    """SQLite's write path: a synchronous engine driven from one dedicated thread, so a whole
    batch of operations costs one thread hop (aiosqlite hops once per statement)."""

    def __init__(self, url: str) -> None:
        sync_url = make_url(url).set(drivername="sqlite+pysqlite")
        self.engine = create_engine(sync_url, pool_size=1, max_overflow=0)
        setup_engine(self.engine, "BEGIN IMMEDIATE", wal=True)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-writer")

    async def run(self, fn: Callable[[Connection], T]) -> T:
        def go() -> T:
            with self.engine.begin() as conn:
                return fn(conn)

        return await asyncio.get_running_loop().run_in_executor(self._thread, go)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self.engine.dispose)
        self._thread.shutdown(wait=False)
