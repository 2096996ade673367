"""SQLAlchemy 2 declarative tables. The schema itself is owned by Alembic (migrations/)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class UTCDateTime(TypeDecorator[datetime]):
    """A `timestamp` column holding naive UTC on every database. An aware value is converted
    to UTC on the way in: asyncpg refuses aware values for `timestamp without time zone`, and
    SQLite would store an aware value's local wall time. Values read back are naive UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            return value.astimezone(UTC).replace(tzinfo=None)
        return value


class JobRow(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pipeline: Mapped[str] = mapped_column(String(100), index=True)
    kind: Mapped[str] = mapped_column(String(64))
    provider: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    params: Mapped[dict[str, object]] = mapped_column(JSON)
    fire_time: Mapped[datetime | None] = mapped_column(UTCDateTime)
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    remote_id: Mapped[str | None] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    polls: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    remote_done_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    retry_of: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        Index("ix_jobs_state_provider", "state", "provider"),
        Index("ix_jobs_remote_id", "remote_id"),
        # Partial indexes for the daemon's twice-a-second look for jobs to stop: they hold only
        # the rows that can match (jobs with a cancel request; jobs with a deadline), so the
        # look costs the same with 100,000 jobs in flight as with 10. Their conditions do not
        # name `state`, so SQLite's planner prefers them to ix_jobs_state_provider. Only the
        # SQLite condition is declared here: a `postgresql_where` would import SQLAlchemy's
        # PostgreSQL dialect into every process (+3 MiB resident); migration 0004 gives
        # PostgreSQL the same conditions.
        Index(
            "ix_jobs_cancel_requested",
            "state",
            sqlite_where=text("cancel_requested = 1"),
        ),
        Index(
            "ix_jobs_deadline",
            "state",
            "deadline_at",
            sqlite_where=text("deadline_at IS NOT NULL"),
        ),
    )


class TransitionRow(Base):
    __tablename__ = "transitions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    reason: Mapped[str | None] = mapped_column(Text)


class ResultRow(Base):
    __tablename__ = "results"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    rows: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class QuotaUsageRow(Base):
    """One row per submission that left for a provider: the rolling-window quota is counted here."""

    __tablename__ = "quota_usage"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    refunded: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (Index("ix_quota_usage_provider_at", "provider", "at"),)


class RemoteJobRow(Base):
    """Every remote job a ledger job ever owned (a job's `remote_id` holds only its latest
    attempt's). Reconciliation never takes one of these for a lost submission's, and the key
    makes one remote job owned by two ledger jobs impossible."""

    __tablename__ = "remote_jobs"

    provider: Mapped[str] = mapped_column(String(64), primary_key=True)
    remote_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime)


class JobPartRow(Base):
    """One piece of a job that takes several remote calls: a Claro export part (rows
    skip..skip+count, downloaded to a part file) or a Claravine chunk (a POST of ≤ 1,000 rows with
    its own transaction). A crash resumes at the first part not DONE."""

    __tablename__ = "job_parts"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(255))
    remote_id: Mapped[str | None] = mapped_column(String(255))
    first_row: Mapped[int | None] = mapped_column(BigInteger)
    row_count: Mapped[int | None] = mapped_column(BigInteger)
    content_sha256: Mapped[str | None] = mapped_column(String(64))
    path: Mapped[str | None] = mapped_column(Text)
    bytes: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)
    credits: Mapped[int | None] = mapped_column(Integer)  # provider credits it consumed (clariBI)
    # An import chunk's place in its source file: bytes [byte_start, byte_end) on lines
    # first_line..last_line, so sending re-reads only that range (migration 0008).
    byte_start: Mapped[int | None] = mapped_column(BigInteger)
    byte_end: Mapped[int | None] = mapped_column(BigInteger)
    first_line: Mapped[int | None] = mapped_column(BigInteger)
    last_line: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_job_parts_content", "content_sha256"),)


class NotificationRow(Base):
    """The notification outbox: one row per (event, webhook target), written before any attempt
    to deliver it, so a crash between a failure and its delivery loses nothing. `target` is a
    digest of the webhook URL (the URL is a credential; it stays in the config)."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(255), unique=True)  # event identity + target
    target: Mapped[str] = mapped_column(String(64))
    event: Mapped[str] = mapped_column(String(32))
    pipeline: Mapped[str | None] = mapped_column(String(100))
    payload: Mapped[dict[str, object]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16))  # PENDING, DELIVERED, ABANDONED
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_notifications_state_next", "state", "next_attempt_at"),)


class OpsStateRow(Base):
    """Small named values the operations side keeps across restarts (the notifier's cursor in
    the transitions table, when retention last ran)."""

    __tablename__ = "ops_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class ImportProgressRow(Base):
    """An import job's reading of its source (migration 0008): rows validated so far, rows
    rejected (Clayva `skip`), the side file listing them, the file's size and mtime when its
    plan was made (a restart re-validates only if they changed), the current send rate."""

    __tablename__ = "import_progress"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    phase: Mapped[str] = mapped_column(String(16))  # validating, sending, done
    rows_validated: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_rejected: Mapped[int] = mapped_column(BigInteger, default=0)
    rejects_path: Mapped[str | None] = mapped_column(Text)
    rejects: Mapped[str | None] = mapped_column(Text)  # the first 100, one a line
    source_size: Mapped[int | None] = mapped_column(BigInteger)
    source_mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    rate: Mapped[float | None] = mapped_column(Float)  # rows/s confirmed, recent
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ReplicaRow(Base):
    """A daemon process on this ledger (migration 0009): who it is and when it last proved it
    was alive. Rows of stopped or dead replicas stay a week for `orchestrator replicas`."""

    __tablename__ = "replicas"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    version: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class LeaseRow(Base):
    """Who may do a provider account's remote work (or the leader's: notifications, retention)
    until when (migration 0009). `epoch` counts the hands the lease passed through."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(64))
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    acquired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
