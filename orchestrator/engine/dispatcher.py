"""Admission control and submission.

Per provider account: never more jobs queued+running than the concurrency limit, never more
submissions in the rolling 30 days than the quota (less the reserve). Fair across pipelines:
each free slot goes to the next pipeline in turn, oldest job first.

Per ambiguity class (adapter.ambiguity_class: what the provider's listing cannot tell apart, e.g.
one Clari export module) at most one submission is ever in the air or unresolved: a POST of
class C leaves only when no other job of C is between its SUBMITTING row and a known outcome. So
a lost answer is matched to a unique remote job (orchestrator.reconcile); a job whose match is
still not unique waits, holding its slot and its class, until the operator decides.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

import structlog

from orchestrator.domain import Job, JobState
from orchestrator.engine.context import UNBUDGETED_SUFFIX, Context, budget_key
from orchestrator.errors import ProviderError, QuotaExceeded, Rejected, Throttled
from orchestrator.ledger.store import utcnow
from orchestrator.providers import KINDS
from orchestrator.reconcile import operator_hint

log = structlog.get_logger(__name__)
LOST_SUBMIT_CHECKS = 3
HEADS_AHEAD = 16  # pending jobs read beyond the free submit capacity, to refill from


class Dispatcher:
    def __init__(
        self,
        ctx: Context,
        on_submitted: Callable[[Job], None],
        on_started: Callable[[Job], None] | None = None,
    ) -> None:
        self.ctx = ctx
        self.on_submitted = on_submitted
        self.on_started = on_started
        self._turn: dict[str, deque[str]] = defaultdict(deque)
        self._tasks: set[asyncio.Task[None]] = set()
        self._sem = asyncio.Semaphore(ctx.cfg.daemon.max_submits)
        self.unresolved: dict[int, Job] = {}  # submits whose outcome we could not learn yet
        self._errors: dict[int, str] = {}
        self._claimed: set[int] = set()  # jobs with a live submit task
        self._submitting: dict[int, tuple[str, asyncio.Task[None]]] = {}  # job -> account, task
        self._heads: dict[str, dict[str, deque[Job]]] = {}
        self._heads_at = -1.0
        self._posting: dict[str, int] = defaultdict(int)  # submit requests in the air
        self._reconciling: set[str] = set()
        self._reconcile_lock = asyncio.Lock()
        self._holders: dict[str, set[int]] = defaultdict(set)  # class -> jobs holding it
        self._ambiguous: dict[int, str] = {}  # job -> the reason last written to the ledger

    @property
    def busy(self) -> int:
        return len(self._tasks)

    def invalidate(self) -> None:
        """New PENDING jobs exist (enqueued in this process): read the ledger on the next round."""
        self._heads_at = -1.0

    async def dispatch(self) -> int:
        """Start as many submissions as the budgets allow. Returns how many were started.

        The oldest PENDING jobs of each pipeline are read once and reused until `claim_interval`
        passes (or something new is enqueued here), so refilling a freed slot needs no query.
        """
        capacity = self.ctx.cfg.daemon.max_submits - len(self._claimed)
        if capacity <= 0:
            return 0
        now = time.monotonic()
        stale = now - self._heads_at >= self.ctx.cfg.daemon.claim_interval
        if stale or not any(q for qs in self._heads.values() for q in qs.values()):
            held = self.ctx.held
            if held is not None and not (held - self.ctx.closed):
                return 0  # no account of ours is open to new work (a replica without leases)
            pending = await self.ctx.ledger.pending_heads(
                capacity + HEADS_AHEAD,
                exclude=self._claimed,
                providers=None if held is None else sorted(held - self.ctx.closed),
            )
            self._heads = defaultdict(lambda: defaultdict(deque))
            for job in pending:
                self._heads[budget_key(job)][job.pipeline].append(job)
            self._heads_at = now
        started = 0
        for provider, queues in self._heads.items():
            started += self._dispatch_provider(provider, queues)
        return started

    def _dispatch_provider(self, provider: str, queues: dict[str, deque[Job]]) -> int:
        budget = self.ctx.budget_named(provider)
        account = provider.removesuffix(UNBUDGETED_SUFFIX)
        if budget is None or account in self._reconciling or not self.ctx.may_submit(account):
            return 0
        turn = self._turn[provider]
        for name in queues:
            if name not in turn:
                turn.append(name)
        started = 0
        while budget.can_submit() and len(self._claimed) < self.ctx.cfg.daemon.max_submits:
            job = self._next_free(turn, queues)
            if job is None:
                break
            self._hold(job)
            budget.on_reserve(job.id)  # hold the slot and quota unit before the request leaves
            self._claimed.add(job.id)
            task = asyncio.create_task(self._submit(job), name=f"submit-{job.id}")
            self._tasks.add(task)
            self._submitting[job.id] = (job.provider, task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(functools.partial(self._release_claim, job.id))
            started += 1
        return started

    def _next_free(self, turn: deque[str], queues: dict[str, deque[Job]]) -> Job | None:
        """The next pipeline's oldest job whose ambiguity class is free (fair turns)."""
        for _ in range(len(turn)):
            name = turn[0]
            turn.rotate(-1)
            queue = queues.get(name)
            for i, job in enumerate(queue or ()):
                if self._class_free(job):
                    assert queue is not None
                    del queue[i]
                    return job
        return None

    # --- ambiguity classes ------------------------------------------------------------------
    def _class_of(self, job: Job) -> str | None:
        adapter = self.ctx.adapters.get(job.provider)
        cls = adapter.ambiguity_class(job) if adapter is not None else None
        return None if cls is None else f"{job.provider}: {cls}"

    def _class_free(self, job: Job) -> bool:
        cls = self._class_of(job)
        return cls is None or not (self._holders.get(cls, set()) - {job.id})

    def _hold(self, job: Job) -> None:
        cls = self._class_of(job)
        if cls is not None:
            self._holders[cls].add(job.id)

    def _unhold(self, job: Job) -> None:
        """The job's outcome is known (a remote id, a refusal, provably nothing): its class is
        free for the next submission."""
        cls = self._class_of(job)
        if cls is not None and cls in self._holders:
            self._holders[cls].discard(job.id)
            if not self._holders[cls]:
                del self._holders[cls]
        self.ctx.wake_dispatch.set()

    def add_unresolved(self, job: Job, error: str = "") -> None:
        """A SUBMITTING job whose outcome is unknown (a lost answer; a previous process's): it
        holds its slot and its class until reconciled."""
        self.unresolved[job.id] = job
        if error:
            self._errors[job.id] = error
        self._hold(job)

    def waiting_for_operator(self) -> dict[int, str]:
        return dict(self._ambiguous)

    async def check_operator(self) -> None:
        """One ledger read: did the operator decide any job waiting for them?"""
        waiting = [self.unresolved[i] for i in self._ambiguous if i in self.unresolved]
        if waiting:
            await self._decided_elsewhere(waiting)

    def _release_claim(self, job_id: int, _task: object = None) -> None:
        self._claimed.discard(job_id)
        self._submitting.pop(job_id, None)
        self.ctx.wake_dispatch.set()  # a submit slot is free: refill it now

    async def _submit(self, job: Job) -> None:
        async with self._sem:
            try:
                await self._submit_one(job)
            except Exception:
                log.exception("submit_crashed", job_id=job.id)
                raise
            finally:
                if job.id not in self.unresolved:  # an unknown outcome keeps holding its class
                    self._unhold(job)

    async def _submit_one(self, job: Job) -> None:
        ctx, budget = self.ctx, self.ctx.budget_for(job)
        spec = KINDS[job.kind]
        now = utcnow()
        try:
            await ctx.ledger.transition(
                job,
                JobState.PENDING,
                JobState.SUBMITTING,
                reason=f"attempt {job.attempts + 1}",
                quota=job.provider if spec.uses_quota else None,
                attempts=job.attempts + 1,
                submitted_at=now,
                error=None,
            )
        except Exception as exc:  # someone else moved it (cancelled from the CLI): give it back
            budget.on_unreserve(job.id)
            log.info("submit_skipped", job_id=job.id, reason=str(exc))
            return
        sub = replace(job, state=JobState.SUBMITTING, attempts=job.attempts + 1, submitted_at=now)
        log.debug("job_submitting", job_id=job.id, pipeline=job.pipeline, attempt=sub.attempts)
        if spec.staged and self.on_started is not None:
            # Several remote calls with checkpoints: the worker makes them, holding this slot.
            await ctx.ledger.transition(
                sub, JobState.SUBMITTING, JobState.RUNNING, reason="started"
            )
            self.on_started(replace(sub, state=JobState.RUNNING))
            return
        try:
            remote_id = await self._post(sub)
        except QuotaExceeded as exc:
            await self._refused(sub, exc, full=True)
            return
        except Throttled as exc:
            await self._refused(sub, exc, full=False)
            return
        except Rejected as exc:
            budget.on_unreserve(job.id)
            await ctx.ledger.transition(
                sub,
                JobState.SUBMITTING,
                JobState.FAILED,
                reason="rejected",
                refund_quota=True,
                error=str(exc),
            )
            ctx.finished(sub, JobState.FAILED)
            return
        except ProviderError as exc:
            await self._lost(sub, exc)  # still "in the air" for the budget until reconciled
            return
        budget.on_answered(job.id)
        await self.adopt(sub, remote_id, reason="submitted")

    async def _post(self, job: Job) -> str:
        self._posting[job.provider] += 1
        try:
            return await self.ctx.adapters[job.provider].submit(job)
        finally:
            self._posting[job.provider] -= 1

    async def adopt(self, job: Job, remote_id: str, *, reason: str) -> None:
        ctx = self.ctx
        await ctx.ledger.transition(
            job,
            JobState.SUBMITTING,
            JobState.RUNNING,
            reason=reason,
            remote_id=remote_id,
            error=None,
        )
        ctx.stats.submissions += 1
        ctx.metrics.submissions.labels(job.provider, job.kind).inc()
        log.info("job_submitted", job_id=job.id, pipeline=job.pipeline, remote_id=remote_id)
        self.on_submitted(replace(job, state=JobState.RUNNING, remote_id=remote_id))

    async def _refused(self, job: Job, exc: ProviderError, *, full: bool) -> None:
        """The provider created nothing: back to waiting without spending an attempt."""
        ctx, budget = self.ctx, self.ctx.budget_for(job)
        budget.on_unreserve(job.id)
        if full:
            ctx.stats.quota_rejections += 1
            budget.on_provider_full()
            log.warning("submit_refused_limits", job_id=job.id, error=str(exc))
            await ctx.ledger.transition(
                job,
                JobState.SUBMITTING,
                JobState.PENDING,
                reason=f"provider limit: {exc.code}",
                refund_quota=True,
                attempts=job.attempts - 1,
            )
            asyncio.get_running_loop().call_later(
                1.0, lambda: asyncio.ensure_future(self._refresh_then_wake(job.provider))
            )
            return
        retry_after = exc.retry_after if isinstance(exc, Throttled) else None
        wait = ctx.retry_at(1).total_seconds() if retry_after is None else retry_after
        log.warning("submit_throttled", job_id=job.id, wait=wait)
        await ctx.ledger.transition(
            job,
            JobState.SUBMITTING,
            JobState.RETRY_WAIT,
            reason="throttled",
            refund_quota=True,
            attempts=job.attempts - 1,
            error=str(exc),
            next_attempt_at=utcnow() + timedelta(seconds=wait),
        )

    async def _refresh_then_wake(self, provider: str) -> None:
        await self.ctx.refresh_budget(provider)
        self.ctx.wake_dispatch.set()

    async def _lost(self, job: Job, exc: ProviderError) -> None:
        """The request may or may not have created a remote job: ask the provider before any
        retry, so the same export is never made twice."""
        log.warning("submit_outcome_unknown", job_id=job.id, error=str(exc))
        self.add_unresolved(job, str(exc))
        for attempt in range(1, LOST_SUBMIT_CHECKS + 1):
            if await self.reconcile(job.provider) or job.id not in self.unresolved:
                return
            await asyncio.sleep(self.ctx.retry_at(attempt).total_seconds())
        # still unknown: the slot stays held; the daemon calls reconcile() again later

    async def reconcile(self, provider: str) -> bool:
        """Settle every unresolved SUBMITTING job of `provider` in one look at the provider.

        New submissions to the account pause, and those already in the air are awaited, so
        every remote job the listing shows is either owned by a ledger row or one of ours that
        lost its answer. Returns False when the provider could not be asked."""
        self._reconciling.add(provider)
        try:
            async with self._reconcile_lock:
                while self._posting.get(provider, 0) > 0:  # noqa: ASYNC110 (brief, rare wait)
                    await asyncio.sleep(0.02)
                group = [j for j in self.unresolved.values() if j.provider == provider]
                group = await self._decided_elsewhere(group)
                if not group:
                    return True
                try:
                    known = await self.ctx.ledger.known_remote_ids(provider)
                    found = await self.ctx.adapters[provider].find(group, known)
                except ProviderError as exc:
                    log.warning("reconcile_failed", provider=provider, error=str(exc))
                    return False
                for job in group:
                    lookup = found.get(job.id)
                    if lookup is None:
                        continue
                    if lookup.ambiguous is not None:
                        await self._wait_for_operator(job, lookup.ambiguous)
                        continue
                    log.info("reconciled", job_id=job.id, adopted=lookup.remote_id)
                    await self.settle(job, lookup.remote_id, error=self._errors.get(job.id, ""))
                return True
        finally:
            self._reconciling.discard(provider)
            self.ctx.wake_dispatch.set()

    async def _wait_for_operator(self, job: Job, reason: str) -> None:
        """Not adopted, not resubmitted: the job keeps its slot and class, and says why."""
        message = reason + operator_hint(job.id)
        if self._ambiguous.get(job.id) != message:
            self._ambiguous[job.id] = message
            log.warning("reconcile_ambiguous", job_id=job.id, reason=reason)
            await self.ctx.ledger.update_fields(job.id, error=message)

    async def _decided_elsewhere(self, group: list[Job]) -> list[Job]:
        """Drop the jobs the operator decided from another process (`jobs adopt` moved it to
        RUNNING, `jobs resubmit` to PENDING); the rest are still ours to reconcile."""
        current = await self.ctx.ledger.get_many([j.id for j in group])
        still: list[Job] = []
        for job in group:
            now = current.get(job.id)
            if now is not None and now.state == JobState.SUBMITTING:
                still.append(job)
                continue
            self._forget_unresolved(job)
            budget = self.ctx.budget_for(job)
            if now is not None and now.state == JobState.RUNNING and now.remote_id:
                budget.on_answered(job.id)
                log.info("operator_adopted", job_id=job.id, remote_id=now.remote_id)
                self.on_submitted(now)
            else:
                budget.on_unreserve(job.id)
                log.info("operator_decided", job_id=job.id, state=now.state if now else None)
        return still

    def _forget_unresolved(self, job: Job) -> None:
        self.unresolved.pop(job.id, None)
        self._errors.pop(job.id, None)
        self._ambiguous.pop(job.id, None)
        self._unhold(job)

    async def settle(self, job: Job, remote_id: str | None, *, error: str) -> None:
        """Conclude a SUBMITTING job whose outcome was unknown."""
        self._forget_unresolved(job)
        if remote_id is not None:
            self.ctx.budget_for(job).on_answered(job.id)
            await self.adopt(job, remote_id, reason="adopted after an unanswered submit")
            return
        ctx = self.ctx
        ctx.budget_for(job).on_unreserve(job.id)
        if not error:  # a crash, not a failed request: the attempt never happened
            await ctx.ledger.transition(
                job,
                JobState.SUBMITTING,
                JobState.PENDING,
                reason="recovered: no remote job was created",
                refund_quota=True,
                attempts=max(0, job.attempts - 1),
                error=None,
            )
            return
        if job.attempts >= job.max_attempts:
            await ctx.ledger.transition(
                job,
                JobState.SUBMITTING,
                JobState.FAILED,
                reason="submit failed",
                refund_quota=True,
                error=error,
            )
            ctx.finished(job, JobState.FAILED)
            return
        await ctx.ledger.transition(
            job,
            JobState.SUBMITTING,
            JobState.RETRY_WAIT,
            reason="submit failed, nothing created",
            refund_quota=True,
            error=error,
            next_attempt_at=utcnow() + ctx.retry_at(job.attempts),
        )
        ctx.retried(job)

    # --- replica leases (engine/ownership.py) -----------------------------------------------
    def busy_for(self, account: str) -> int:
        return sum(1 for acc, _ in self._submitting.values() if acc == account)

    async def drop_account(self, account: str) -> None:
        """The account's lease is gone: stop its submits now and forget its unresolved jobs
        (the next owner reconciles them from the ledger, as after a crash)."""
        tasks = [t for acc, t in self._submitting.values() if acc == account]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for job in [j for j in self.unresolved.values() if j.provider == account]:
            self._forget_unresolved(job)
        for key in [k for k in self._heads if k.removesuffix(UNBUDGETED_SUFFIX) == account]:
            del self._heads[key]

    async def drain(self, within: float) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=within)

    def cancel_all(self) -> None:
        for task in self._tasks:
            task.cancel()
