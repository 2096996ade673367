"""SQLAlchemy 2 declarative tables. The schema itself is owned by Alembic (migrations/)."""

from __future__ import annotations

from datetime import datetime

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
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class JobRow(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pipeline: Mapped[str] = mapped_column(String(100), index=True)
    kind: Mapped[str] = mapped_column(String(64))
    provider: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    params: Mapped[dict[str, object]] = mapped_column(JSON)
    fire_time: Mapped[datetime | None] = mapped_column(DateTime)
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    remote_id: Mapped[str | None] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    polls: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    submitted_at: Mapped[datetime | None] = mapped_column(DateTime)
    remote_done_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime)
    deadline_at: Mapped[datetime | None] = mapped_column(DateTime)
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
    at: Mapped[datetime] = mapped_column(DateTime)
    reason: Mapped[str | None] = mapped_column(Text)


class ResultRow(Base):
    __tablename__ = "results"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    rows: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class QuotaUsageRow(Base):
    """One row per submission that left for a provider: the rolling-window quota is counted here."""

    __tablename__ = "quota_usage"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime)
    refunded: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (Index("ix_quota_usage_provider_at", "provider", "at"),)


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
    updated_at: Mapped[datetime] = mapped_column(DateTime)

    __table_args__ = (Index("ix_job_parts_content", "content_sha256"),)


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
    updated_at: Mapped[datetime] = mapped_column(DateTime)
