"""The ledger's tables as Core handles, and rows as domain objects: what every query shares."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table

from orchestrator.domain import Job, JobState
from orchestrator.ledger.models import (
    ImportProgressRow,
    JobPartRow,
    JobRow,
    NotificationRow,
    OpsStateRow,
    QuotaUsageRow,
    RemoteJobRow,
    ResultRow,
    TransitionRow,
)

jobs_t: Table = JobRow.__table__  # type: ignore[assignment]  # declarative tables are Tables
transitions_t: Table = TransitionRow.__table__  # type: ignore[assignment]
results_t: Table = ResultRow.__table__  # type: ignore[assignment]
quota_t: Table = QuotaUsageRow.__table__  # type: ignore[assignment]
parts_t: Table = JobPartRow.__table__  # type: ignore[assignment]
j2 = jobs_t.alias("j2")  # the same table again, for correlated subqueries
notify_t: Table = NotificationRow.__table__  # type: ignore[assignment]
ops_t: Table = OpsStateRow.__table__  # type: ignore[assignment]
remote_jobs_t: Table = RemoteJobRow.__table__  # type: ignore[assignment]
progress_t: Table = ImportProgressRow.__table__  # type: ignore[assignment]


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


_JOB_COLUMNS = frozenset(c.name for c in JobRow.__table__.columns)
