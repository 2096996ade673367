"""The two dialects below the group-commit writer (ledger/writer.py): SQLite's raw cursor path
and PostgreSQL's one-statement path, behind one `transition`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table

from orchestrator.domain import TERMINAL, JobState, check_transition
from orchestrator.ledger.dialects import postgresql, sqlite
from orchestrator.ledger.rows import _JOB_COLUMNS


def transition(
    conn: Connection,
    job_id: int,
    src: JobState,
    dst: JobState,
    reason: str | None,
    values: dict[str, Any],
    now: datetime,
    quota: str | None = None,
) -> None:
    """Move one job src → dst on the writer's connection, with its transition row (and, if
    `quota` names a provider, one unit of its rolling quota). StaleState before any write if
    the stored state is not `src`."""
    check_transition(job_id, src, dst)
    if dst in TERMINAL:
        values = {"finished_at": now, **values}
    unknown = set(values) - _JOB_COLUMNS
    if unknown:
        raise ValueError(f"not job columns: {sorted(unknown)}")
    if conn.dialect.name == "sqlite":
        sqlite.transition(conn, job_id, src, dst, reason, values, now, quota)
    else:
        postgresql.transition(conn, job_id, src, dst, reason, values, now, quota)


def insert_new(conn: Connection, table: Table, key: str) -> Any:
    """INSERT … ON CONFLICT (key) DO NOTHING, on either dialect: a row another process added
    meanwhile is kept, and the statement does not fail."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing(index_elements=[key])
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing(index_elements=[key])
