"""Downloads results: streamed to a temp file, fsynced, renamed into place; sha256, bytes and
rows recorded with the FETCHING → SUCCEEDED transition in one ledger write."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import structlog

from orchestrator.domain import Job, JobState
from orchestrator.engine.context import Context
from orchestrator.errors import ProviderError, Rejected
from orchestrator.ledger.store import utcnow
from orchestrator.outputs import AtomicFile, FileCommitter, count_rows, result_path
from orchestrator.rowcount import CsvCounter, RowCounter

log = structlog.get_logger(__name__)
FETCH_TRIES = 4


class Counted:
    """A sink that also feeds what it writes to a record counter."""

    def __init__(self, sink: AtomicFile, counter: RowCounter) -> None:
        self.sink, self.counter = sink, counter

    async def write(self, data: bytes) -> None:
        self.counter.feed(data)
        self.sink.write_sync(data)


class Fetcher:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._sem = asyncio.Semaphore(ctx.cfg.daemon.max_fetches)
        self._tasks: set[asyncio.Task[None]] = set()
        self.active: set[int] = set()
        self._account: dict[asyncio.Task[None], str] = {}
        self.committer = FileCommitter()

    @property
    def busy(self) -> int:
        return len(self._tasks)

    def start(self, job: Job, delay: float = 0.0) -> None:
        if job.id in self.active:
            return
        self.active.add(job.id)
        task = asyncio.create_task(self._run(job, delay), name=f"fetch-{job.id}")
        self._tasks.add(task)
        self._account[task] = job.provider
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._account.pop)

    async def _run(self, job: Job, delay: float) -> None:
        try:
            if delay:
                await asyncio.sleep(delay)
            async with self._sem:
                await self._fetch(job)
        finally:
            self.active.discard(job.id)

    async def _fetch(self, job: Job) -> None:
        ctx = self.ctx
        adapter = ctx.adapters[job.provider]
        ext = adapter.result_extension(job)
        final = result_path(ctx.cfg.output.dir, job, ext)
        error: ProviderError | str | None = None
        for attempt in range(1, FETCH_TRIES + 1):
            sink = AtomicFile(final).open()
            counted = Counted(sink, CsvCounter()) if ext == "csv" else None
            try:
                await adapter.fetch(job, counted or sink)
                await sink.commit(self.committer)
            except Rejected as exc:  # the provider will not serve it (expired, unknown)
                sink.abort()
                await self._give_up(job, exc)
                return
            except ProviderError as exc:
                sink.abort()
                error = exc
                log.warning("fetch_retry", job_id=job.id, error=str(exc), attempt=attempt)
                await asyncio.sleep(ctx.retry_at(attempt).total_seconds() / 10)
                continue
            except asyncio.CancelledError:
                sink.abort()
                raise
            except OSError as exc:  # storing it: the output dir is a file, unwritable, full
                sink.abort()
                error = f"result not stored: {exc}"
                log.warning("fetch_store_failed", job_id=job.id, error=error, attempt=attempt)
                await asyncio.sleep(ctx.retry_at(attempt).total_seconds() / 10)
                continue
            except Exception as exc:  # a bug must not strand the job in FETCHING
                sink.abort()
                log.exception("fetch_crashed", job_id=job.id)
                error = ProviderError(job.provider, f"fetch crashed: {type(exc).__name__}")
                await asyncio.sleep(ctx.retry_at(attempt).total_seconds())
                continue
            if counted is not None:  # counted while streaming: no second pass over a big file
                rows: int | None = counted.counter.result()
            else:
                rows = await asyncio.to_thread(count_rows, final, ext)
            result = {"path": str(final), "bytes": sink.bytes, "sha256": sink.sha256, "rows": rows}
            await ctx.ledger.transition(
                job,
                JobState.FETCHING,
                JobState.SUCCEEDED,
                reason="result stored",
                result=result,
                error=None,
            )
            ctx.finished(job, JobState.SUCCEEDED, **result)
            return
        # Every try failed: this counts as a failed attempt (run again while attempts remain,
        # else FAILED with the last error), so a fault that persists ends the job instead of
        # keeping it in FETCHING for ever.
        log.warning("fetch_failed", job_id=job.id, error=str(error), tries=FETCH_TRIES)
        await self._give_up(job, str(error), reason="fetch failed")

    async def _give_up(
        self, job: Job, exc: ProviderError | str, *, reason: str = "result unavailable"
    ) -> None:
        ctx = self.ctx
        if job.attempts < job.max_attempts:
            await ctx.ledger.transition(
                job,
                JobState.FETCHING,
                JobState.RETRY_WAIT,
                reason=reason,
                error=str(exc),
                next_attempt_at=utcnow() + ctx.retry_at(job.attempts),
            )
            ctx.retried(job)
            return
        await ctx.ledger.transition(
            job, JobState.FETCHING, JobState.FAILED, reason=reason, error=str(exc)
        )
        ctx.finished(replace(job), JobState.FAILED)

    async def drain(self, within: float) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=within)

    def busy_for(self, account: str) -> int:
        return sum(1 for acc in self._account.values() if acc == account)

    async def cancel_account(self, account: str) -> None:
        """Stop the account's downloads (the lease is gone); the next owner fetches again."""
        tasks = [t for t, acc in self._account.items() if acc == account]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def cancel_all(self) -> None:
        for task in self._tasks:
            task.cancel()
