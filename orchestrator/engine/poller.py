"""Status polling: one heap of next-poll times for every tracked job (no task per job).

When a job falls due, its account is polled; where the provider answers for every job in one call
(Clari `GET /export/jobs`), every tracked job of that account learns its status from that call,
so a backlog costs far fewer than one request per job. Each job's own next poll comes from
backoff.next_poll_delay, informed by how long its pipeline's jobs took before.

A tracked job is a small record (about 200 bytes), not the whole Job: the full job is read
back from the ledger, for all the jobs one poll finished at once, only when its state changes.
"""

from __future__ import annotations

import asyncio
import heapq
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

import structlog

from orchestrator.backoff import HISTORY_RUNS, PollPolicy, next_poll_delay, poll_points
from orchestrator.domain import Job, RemoteState, RemoteStatus
from orchestrator.engine.context import Context
from orchestrator.errors import ProviderError

log = structlog.get_logger(__name__)
HISTORY_TTL = 60.0  # seconds a pipeline's duration history is cached


class Tracked:
    __slots__ = ("due", "id", "pipeline", "polls", "provider", "remote_id", "submitted")

    def __init__(self, job: Job) -> None:
        self.id = job.id
        self.pipeline = sys.intern(job.pipeline)
        self.provider = sys.intern(job.provider)
        self.remote_id = job.remote_id or ""
        self.submitted = job.submitted_at.timestamp() if job.submitted_at else time.time()
        self.polls = 0
        self.due = 0.0  # monotonic time of its next poll (older heap entries are stale)


class Poller:
    def __init__(
        self,
        ctx: Context,
        on_done: Callable[[Job], Awaitable[None]],
        on_ended: Callable[[Job, RemoteStatus], Awaitable[None]],
    ) -> None:
        self.ctx = ctx
        self.on_done = on_done
        self.on_ended = on_ended
        self.jobs: dict[int, Tracked] = {}
        self._heap: list[tuple[float, int]] = []
        self._wake = asyncio.Event()
        self._points: dict[str, tuple[float, list[float]]] = {}
        self._points_loading: dict[str, asyncio.Future[list[float]]] = {}
        self._policies: dict[str, PollPolicy] = {}
        self._adding: set[asyncio.Task[None]] = set()  # track() of jobs added before a schedule

    def __len__(self) -> int:
        return len(self.jobs)

    def policy(self, provider: str) -> PollPolicy:
        if provider not in self._policies:
            p = self.ctx.cfg.providers[provider].poll
            self._policies[provider] = PollPolicy(
                initial=p.initial, max_interval=p.max_interval, min_interval=p.min_interval
            )
        return self._policies[provider]

    async def points(self, pipeline: str) -> list[float]:
        cached = self._points.get(pipeline)
        if cached is not None and time.monotonic() - cached[0] < HISTORY_TTL:
            return cached[1]
        # One query per pipeline at a time: jobs tracked while it runs share its answer (a burst
        # of submissions used to send one history query per job, ~0.5 ms of CPU each).
        pending = self._points_loading.get(pipeline)
        if pending is None:
            pending = asyncio.ensure_future(self._load_points(pipeline))
            self._points_loading[pipeline] = pending
        try:
            return await asyncio.shield(pending)
        except Exception as exc:  # the ledger could not be read: poll by age alone meanwhile
            log.warning("poll_history_unavailable", pipeline=pipeline, error=str(exc))
            return []

    async def _load_points(self, pipeline: str) -> list[float]:
        try:
            history = await self.ctx.ledger.durations(pipeline, limit=HISTORY_RUNS)
            # ~10 ms of arithmetic (an optimal schedule over 800 ages): off the event loop
            pts = await asyncio.to_thread(poll_points, history)
            self._points[pipeline] = (time.monotonic(), pts)
            return pts
        finally:
            self._points_loading.pop(pipeline, None)

    async def track(self, job: Job, *, now: bool = False) -> None:
        item = Tracked(job)
        self.jobs[job.id] = item
        delay = 0.0 if now else await self._delay(item)
        self._push(item, delay)

    def add(self, job: Job) -> None:
        """Track a job just submitted, from a callback: at once when its pipeline's schedule is
        cached (no task per job on the hot path), else once the schedule is loaded."""
        cached = self._points.get(job.pipeline)
        if cached is None or time.monotonic() - cached[0] >= HISTORY_TTL:
            task = asyncio.get_running_loop().create_task(self.track(job))
            self._adding.add(task)
            task.add_done_callback(self._added)
            return
        item = Tracked(job)
        self.jobs[job.id] = item
        self._push(item, self._delay_from(item, cached[1]))

    def _push(self, item: Tracked, delay: float) -> None:
        item.due = time.monotonic() + delay
        heapq.heappush(self._heap, (item.due, item.id))
        self._wake.set()

    def _added(self, task: asyncio.Task[None]) -> None:
        self._adding.discard(task)
        if not task.cancelled() and task.exception() is not None:  # a bug, not the ledger
            log.error("track_failed", error=repr(task.exception()))

    def wake(self) -> None:
        self._wake.set()

    def forget(self, job_id: int) -> None:
        self.jobs.pop(job_id, None)

    def forget_account(self, account: str) -> None:
        """Stop polling the account's jobs (the lease is gone; the next owner polls them)."""
        for job_id in [i for i, t in self.jobs.items() if t.provider == account]:
            self.jobs.pop(job_id, None)

    async def _delay(self, item: Tracked) -> float:
        return self._delay_from(item, await self.points(item.pipeline))

    def _delay_from(self, item: Tracked, points: list[float]) -> float:
        return next_poll_delay(
            self.policy(item.provider),
            elapsed=max(0.0, time.time() - item.submitted),
            polls_done=item.polls,
            points=points,
            rng=self.ctx.rng,
        )

    async def run(self) -> None:
        while not self.ctx.stopping.is_set():
            due = self._pop_due()
            if not due:
                timeout = self._heap[0][0] - time.monotonic() if self._heap else 1.0
                self._wake.clear()
                try:
                    async with asyncio.timeout(max(0.001, min(timeout, 1.0))):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                continue
            by_provider: dict[str, list[Tracked]] = defaultdict(list)
            for item in due:
                by_provider[item.provider].append(item)
            await asyncio.gather(
                *(self._poll_account_safely(p, items) for p, items in by_provider.items())
            )

    def _pop_due(self) -> list[Tracked]:
        now = time.monotonic()
        due: list[Tracked] = []
        seen: set[int] = set()
        while self._heap and self._heap[0][0] <= now:
            at, job_id = heapq.heappop(self._heap)
            item = self.jobs.get(job_id)
            if item is not None and job_id not in seen and at == item.due:
                due.append(item)
                seen.add(job_id)
        return due

    async def _poll_account_safely(self, provider: str, due: list[Tracked]) -> None:
        """One account's poll; whatever it raises is logged and the account's due jobs are
        polled again later. A provider answer must never stop the daemon (a poll that raised
        AttributeError used to end the process, and recovery polled again on every restart)."""
        try:
            await self._poll_account(provider, due)
        except Exception as exc:
            log.error("poll_crashed", provider=provider, error=f"{type(exc).__name__}: {exc}"[:500])
            await self._retry_later(due)

    async def _retry_later(self, due: list[Tracked]) -> None:
        for item in due:
            item.polls += 1
            try:
                await self._reschedule(item)
            except Exception:  # the ledger's history unreadable: poll by the policy's ceiling
                heapq.heappush(
                    self._heap,
                    (time.monotonic() + self.policy(item.provider).max_interval, item.id),
                )

    async def _poll_account(self, provider: str, due: list[Tracked]) -> None:
        if not self.ctx.may_call(provider):  # its lease is gone: the next owner polls them
            for item in due:
                self.forget(item.id)
            return
        adapter = self.ctx.adapters[provider]
        asked = due
        if adapter.batch_poll:
            asked = [t for t in self.jobs.values() if t.provider == provider]
        started = time.perf_counter()
        sent = time.monotonic()
        try:
            statuses = await adapter.poll([t.remote_id for t in asked])
        except ProviderError as exc:
            log.warning("poll_failed", provider=provider, error=str(exc), jobs=len(due))
            await self._retry_later(due)
            return
        self.ctx.stats.polls += 1
        self.ctx.metrics.polls.labels(provider).inc()
        self.ctx.metrics.poll_seconds.labels(provider).observe(time.perf_counter() - started)
        due_ids = {t.id for t in due}
        changed: list[tuple[Tracked, RemoteStatus]] = []
        budget = self.ctx.budgets.get(provider)
        for item in asked:
            status = statuses.get(item.remote_id)
            if item.id in due_ids:
                item.polls += 1
            if status is not None and status.state not in (RemoteState.QUEUED, RemoteState.RUNNING):
                changed.append((item, status))
                continue
            if status is not None and budget is not None:
                budget.on_seen_active(item.id, sent)  # its later release frees a slot
            if item.id in due_ids or status is not None:
                # A fresh answer for a job not due yet (one listing answers for all) counts
                # as its poll: its next one is from now, so the account's jobs poll together
                # instead of one listing each at staggered times (submissions of a module go
                # one at a time).
                await self._reschedule(item)
        if changed:
            await self._apply(changed)

    async def _apply(self, changed: list[tuple[Tracked, RemoteStatus]]) -> None:
        try:
            jobs = await self.ctx.ledger.get_many([item.id for item, _ in changed])
        except Exception as exc:  # keep tracking them: the next poll tries again
            log.warning("poll_apply_deferred", jobs=len(changed), error=str(exc))
            for item, _ in changed:
                await self._reschedule(item)
            return
        # Only jobs still tracked: an account whose lease went while the poll was in the air
        # is the next owner's to act on.
        changed = [(item, st) for item, st in changed if self.jobs.get(item.id) is item]
        for item, _ in changed:
            self.forget(item.id)
        calls = []
        for item, status in changed:
            job = jobs.get(item.id)
            if job is None:
                continue
            if status.state == RemoteState.DONE:
                calls.append(self.on_done(job))
            else:
                calls.append(self.on_ended(job, status))
        # Concurrently, so the ledger commits the jobs this poll finished as one group.
        await asyncio.gather(*calls)

    async def _reschedule(self, item: Tracked) -> None:
        if item.id in self.jobs:
            self._push(item, await self._delay(item))
