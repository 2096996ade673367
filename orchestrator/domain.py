"""Job states, the allowed transitions and the value objects of the domain. Pure: no I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class JobState(enum.StrEnum):
    PENDING = "PENDING"
    SUBMITTING = "SUBMITTING"
    RUNNING = "RUNNING"
    FETCHING = "FETCHING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    RETRY_WAIT = "RETRY_WAIT"


TERMINAL: frozenset[JobState] = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
IN_FLIGHT: frozenset[JobState] = frozenset(
    {JobState.SUBMITTING, JobState.RUNNING, JobState.FETCHING}
)

# The whole state machine. Anything not listed here is forbidden.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.SUBMITTING, JobState.CANCELLED}),
    JobState.SUBMITTING: frozenset(
        {
            JobState.RUNNING,  # the provider answered with a remote id
            JobState.PENDING,  # quota/concurrency rejection, or recovery proved nothing was created
            JobState.RETRY_WAIT,  # retryable failure
            JobState.FAILED,  # permanent rejection
            JobState.CANCELLED,
        }
    ),
    JobState.RUNNING: frozenset(
        {
            JobState.FETCHING,
            JobState.SUCCEEDED,  # staged jobs (imports, exports in parts) store their own result
            JobState.RETRY_WAIT,
            JobState.FAILED,
            JobState.CANCELLED,
        }
    ),
    JobState.FETCHING: frozenset(
        {JobState.SUCCEEDED, JobState.RETRY_WAIT, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.RETRY_WAIT: frozenset({JobState.PENDING, JobState.CANCELLED, JobState.FAILED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


class IllegalTransition(Exception):
    def __init__(self, job_id: int, src: JobState, dst: JobState) -> None:
        super().__init__(f"job {job_id}: {src} -> {dst} is not an allowed transition")
        self.job_id, self.src, self.dst = job_id, src, dst


class StaleState(Exception):
    """The job was not in the state the caller believed (another writer moved it)."""

    def __init__(self, job_id: int, expected: JobState) -> None:
        super().__init__(f"job {job_id} is no longer {expected}")
        self.job_id, self.expected = job_id, expected


def can_transition(src: JobState, dst: JobState) -> bool:
    return dst in TRANSITIONS[src]


def check_transition(job_id: int, src: JobState, dst: JobState) -> None:
    if not can_transition(src, dst):
        raise IllegalTransition(job_id, src, dst)


class RemoteState(enum.StrEnum):
    """What a provider says of a remote job, mapped from its own status names."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"  # the provider no longer knows the job


@dataclass(frozen=True, kw_only=True, slots=True)
class RemoteStatus:
    state: RemoteState
    raw_status: str
    detail: str | None = None
    started_ms: int | None = None
    expires_ms: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ResultInfo:
    path: str
    bytes: int
    sha256: str
    rows: int | None


@dataclass(frozen=True, kw_only=True, slots=True)
class Job:
    id: int
    pipeline: str
    kind: str
    provider: str
    state: JobState
    params: dict[str, Any] = field(default_factory=dict)
    fire_time: datetime | None = None
    idempotency_key: str = ""
    remote_id: str | None = None
    attempts: int = 0
    max_attempts: int = 3
    created_at: datetime | None = None
    updated_at: datetime | None = None
    submitted_at: datetime | None = None
    finished_at: datetime | None = None
    next_attempt_at: datetime | None = None
    deadline_at: datetime | None = None
    cancel_requested: bool = False
    error: str | None = None
    result_path: str | None = None
    result_bytes: int | None = None
    result_sha256: str | None = None
    result_rows: int | None = None
    retry_of: int | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


class PartState(enum.StrEnum):
    """States of one piece of a multi-call job (ledger table job_parts)."""

    PENDING = "PENDING"  # planned, nothing sent
    SENDING = "SENDING"  # the request may have left: look it up before sending again
    RUNNING = "RUNNING"  # the provider accepted it and is working on it
    DONE = "DONE"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"  # already done by an earlier job (same content): never sent again


@dataclass(frozen=True, kw_only=True, slots=True)
class Part:
    job_id: int
    seq: int
    state: PartState
    name: str | None = None
    remote_id: str | None = None
    first_row: int | None = None
    row_count: int | None = None
    content_sha256: str | None = None
    path: str | None = None
    bytes: int | None = None
    sha256: str | None = None
    detail: str | None = None
    credits: int | None = None
    byte_start: int | None = None  # an import chunk's byte range and lines in its source
    byte_end: int | None = None
    first_line: int | None = None
    last_line: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class PipelineRuns:
    """What the ledger knows of one pipeline's runs (`orchestrator pipelines`, its metrics)."""

    pipeline: str
    last_run_id: int | None = None
    last_run_state: JobState | None = None
    last_run_finished_at: datetime | None = None
    last_success_at: datetime | None = None
    consecutive_failures: int = 0  # FAILED jobs that finished after the last success
    first_created_at: datetime | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ImportProgress:
    """How far an import is: rows validated, sent, confirmed by the provider, rejected (by
    validation with `skip`, or by the provider), and the recent rate of confirmations."""

    job_id: int
    phase: str = "validating"  # validating, sending, done
    rows_validated: int = 0
    rows_sent: int = 0
    rows_confirmed: int = 0
    rows_rejected: int = 0
    rejects_path: str | None = None
    rejects: tuple[str, ...] = ()
    source_size: int | None = None
    source_mtime_ns: int | None = None
    rate: float | None = None

    @property
    def eta_seconds(self) -> float | None:
        """Time left at the current rate (None while validating or before a rate is known)."""
        if self.phase == "done":
            return 0.0
        if self.phase != "sending" or not self.rate:
            return None
        left = self.rows_validated - self.rows_confirmed - self.rows_rejected
        return max(0, left) / self.rate

    def summary(self) -> str:
        """One line for `jobs list`, `jobs watch` and the status page."""
        if self.phase == "validating":
            return f"validating: {self.rows_validated:,} rows so far"
        text = (
            f"{self.rows_validated:,} validated · {self.rows_sent:,} sent · "
            f"{self.rows_confirmed:,} confirmed · {self.rows_rejected:,} rejected"
        )
        if self.phase == "sending" and self.rate:
            eta = self.eta_seconds or 0.0
            text += f" · {self.rate:,.0f} rows/s · ETA {_duration(eta)}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "rows_validated": self.rows_validated,
            "rows_sent": self.rows_sent,
            "rows_confirmed": self.rows_confirmed,
            "rows_rejected": self.rows_rejected,
            "rate_rows_per_s": None if self.rate is None else round(self.rate, 1),
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds),
            "rejects_path": self.rejects_path,
        }


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
