"""Runs staged jobs: kinds whose work is several remote calls with checkpoints in between (Claro
exports in parts, Claravine imports in chunks), so no single remote id can be polled.

A staged job holds its concurrency slot while RUNNING, like any other; its adapter's `run`
resumes from the parts the ledger holds, so a crash, a retry or a restart never repeats a
finished part. One task per *running* staged job: bounded by the provider's concurrency.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

import structlog

from orchestrator.domain import Job, JobState
from orchestrator.engine.context import Context
from orchestrator.errors import (
    ProviderError,
    QuotaExceeded,
    Rejected,
    RemoteJobFailed,
    Throttled,
)
from orchestrator.ledger.store import utcnow
from orchestrator.outputs import FileCommitter
from orchestrator.providers.base import OutcomeUnknown, StagedAdapter, Work

log = structlog.get_logger(__name__)


class Worker:
    def __init__(self, ctx: Context, committer: FileCommitter) -> None:
        self.ctx = ctx
        self.committer = committer
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._account: dict[int, str] = {}

    @property
    def busy(self) -> int:
        return len(self._tasks)

    def start(self, job: Job) -> None:
        if job.id in self._tasks:
            return
        task = asyncio.create_task(self._run(job), name=f"work-{job.id}")
        self._tasks[job.id] = task
        self._account[job.id] = job.provider
        task.add_done_callback(self._done(job.id))

    def _done(self, job_id: int) -> Callable[[asyncio.Task[None]], None]:
        def cb(task: asyncio.Task[None]) -> None:
            if self._tasks.get(job_id) is task:
                self._tasks.pop(job_id, None)
                self._account.pop(job_id, None)
            if not task.cancelled() and task.exception() is not None:
                log.error("work_crashed", job_id=job_id, error=repr(task.exception()))

        return cb

    async def stop(self, job_id: int) -> None:
        """Stop a job's work (cancel, deadline); its parts stay as they are in the ledger."""
        task = self._tasks.pop(job_id, None)
        self._account.pop(job_id, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def busy_for(self, account: str) -> int:
        return sum(1 for job_id, acc in self._account.items() if acc == account)

    async def cancel_account(self, account: str) -> None:
        """Stop the account's staged work (the lease is gone); its parts stay in the ledger and
        the next owner resumes at the first unfinished one."""
        for job_id in [i for i, acc in self._account.items() if acc == account]:
            await self.stop(job_id)

    async def _run(self, job: Job) -> None:
        ctx = self.ctx
        adapter: StagedAdapter = ctx.adapters[job.provider]  # type: ignore[assignment]
        work = Work(
            job=job,
            ledger=ctx.ledger,
            output_dir=ctx.cfg.output.dir,
            committer=self.committer,
            stopping=ctx.stopping,
            now=utcnow,
        )
        log.info("work_started", job_id=job.id, pipeline=job.pipeline, kind=job.kind)
        try:
            result = await adapter.run(job, work)
        except OutcomeUnknown as exc:
            # A call that may have spent (credits, a report) and could not be looked up, or
            # whose match is not unique: no attempt spent; the next run looks again first.
            await self._end(
                job,
                JobState.RETRY_WAIT,
                reason="waiting: outcome of a call unknown",
                error=str(exc),
                attempts=max(0, job.attempts - 1),
                next_attempt_at=utcnow() + ctx.retry_at(max(1, job.attempts)),
            )
            log.warning("job_outcome_unknown", job_id=job.id, error=str(exc))
            return
        except (QuotaExceeded, Throttled) as exc:
            # The provider has no room now (credits, a generation limit): wait, attempt unspent.
            wait = exc.retry_after if isinstance(exc, Throttled) else None
            delay = timedelta(seconds=wait) if wait else ctx.retry_at(max(1, job.attempts))
            await self._end(
                job,
                JobState.RETRY_WAIT,
                reason=f"waiting: {exc.message}",
                error=str(exc),
                attempts=max(0, job.attempts - 1),
                next_attempt_at=utcnow() + delay,
            )
            log.warning("job_waiting", job_id=job.id, error=str(exc), seconds=delay.seconds)
            return
        except (Rejected, RemoteJobFailed) as exc:
            log.warning("job_failed", job_id=job.id, pipeline=job.pipeline, error=str(exc))
            await self._end(job, JobState.FAILED, reason="failed", error=str(exc))
            return
        except ProviderError as exc:
            await self._retry_or_fail(job, str(exc))
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not strand the job RUNNING with its slot held
            log.exception("work_crashed", job_id=job.id)
            await self._retry_or_fail(job, f"{job.provider}: crashed: {type(exc).__name__}: {exc}")
            return
        if result is None:
            await self._end(job, JobState.SUCCEEDED, reason="expanded into jobs", error=None)
            return
        await self._end(job, JobState.SUCCEEDED, reason="result stored", result=result, error=None)

    async def _retry_or_fail(self, job: Job, error: str) -> None:
        if job.attempts < job.max_attempts:
            wait = self.ctx.retry_at(job.attempts)
            await self._end(
                job,
                JobState.RETRY_WAIT,
                reason="will retry (finished parts are kept)",
                error=error,
                next_attempt_at=utcnow() + wait,
            )
            self.ctx.retried(job)
            log.warning("job_retry_scheduled", job_id=job.id, error=error)
            return
        await self._end(job, JobState.FAILED, reason="attempts exhausted", error=error)

    async def _end(self, job: Job, to: JobState, *, reason: str, **kw: Any) -> None:
        """Record the job's outcome. Once decided it is recorded and counted whole, even when
        the work is stopped meanwhile (a deadline or cancel found in the same moment): that
        stop's own transition then loses the race and leaves the count to this one."""
        ctx = self.ctx
        ctx.budget_for(job).on_slot_released(job.id)
        ctx.wake_dispatch.set()
        await _uncancelled(self._record(job, to, reason=reason, **kw))

    async def _record(self, job: Job, to: JobState, *, reason: str, **kw: Any) -> None:
        try:
            await self.ctx.ledger.transition(job, JobState.RUNNING, to, reason=reason, **kw)
        except Exception as exc:  # cancelled from the CLI meanwhile
            log.info("transition_raced", job_id=job.id, error=str(exc))
            return
        if to != JobState.RETRY_WAIT:
            self.ctx.finished(job, to, **(kw.get("result") or {}))

    async def drain(self, within: float) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks.values()), timeout=within)

    def cancel_all(self) -> None:
        for task in self._tasks.values():
            task.cancel()


async def _uncancelled(step: Coroutine[Any, Any, None]) -> None:
    """Run `step` to its end even if the caller is cancelled meanwhile; the cancellation is
    passed on once it has ended."""
    task = asyncio.ensure_future(step)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    task.result()
