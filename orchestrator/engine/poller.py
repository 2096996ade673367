"""Status polling: one heap of next-poll times for every tracked job (no task per job).

When a job falls due, its account is polled; where the provider answers for every job in one call
(Clari `GET /export/jobs`), every tracked job of that account learns its status from that call,
so a backlog costs far fewer than one request per job. Each job's own next poll comes from
backoff.next_poll_delay, informed by how long its pipeline's jobs took before.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

import structlog

from orchestrator.backoff import PollPolicy, next_poll_delay, poll_points
from orchestrator.domain import Job, RemoteState, RemoteStatus
from orchestrator.engine.context import Context
from orchestrator.errors import ProviderError
from orchestrator.ledger.store import utcnow

log = structlog.get_logger(__name__)
HISTORY_TTL = 60.0  # seconds a pipeline's duration history is cached


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
        self.jobs: dict[int, Job] = {}
        self.polls_done: dict[int, int] = {}
        self._heap: list[tuple[float, int]] = []
        self._wake = asyncio.Event()
        self._points: dict[str, tuple[float, list[float]]] = {}

    def __len__(self) -> int:
        return len(self.jobs)

    def policy(self, provider: str) -> PollPolicy:
        p = self.ctx.cfg.providers[provider].poll
        return PollPolicy(
            initial=p.initial, max_interval=p.max_interval, min_interval=p.min_interval
        )

    async def points(self, pipeline: str) -> list[float]:
        cached = self._points.get(pipeline)
        if cached is not None and time.monotonic() - cached[0] < HISTORY_TTL:
            return cached[1]
        pts = poll_points(await self.ctx.ledger.durations(pipeline))
        self._points[pipeline] = (time.monotonic(), pts)
        return pts

    async def track(self, job: Job, *, now: bool = False) -> None:
        self.jobs[job.id] = job
        self.polls_done.setdefault(job.id, 0)
        delay = 0.0 if now else await self._delay(job)
        heapq.heappush(self._heap, (time.monotonic() + delay, job.id))
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def forget(self, job_id: int) -> None:
        self.jobs.pop(job_id, None)
        self.polls_done.pop(job_id, None)

    async def _delay(self, job: Job) -> float:
        elapsed = (utcnow() - job.submitted_at).total_seconds() if job.submitted_at else 0.0
        return next_poll_delay(
            self.policy(job.provider),
            elapsed=max(0.0, elapsed),
            polls_done=self.polls_done.get(job.id, 0),
            points=await self.points(job.pipeline),
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
            by_provider: dict[str, list[Job]] = defaultdict(list)
            for job in due:
                by_provider[job.provider].append(job)
            await asyncio.gather(*(self._poll_account(p, jobs) for p, jobs in by_provider.items()))

    def _pop_due(self) -> list[Job]:
        now = time.monotonic()
        due: list[Job] = []
        seen: set[int] = set()
        while self._heap and self._heap[0][0] <= now:
            _, job_id = heapq.heappop(self._heap)
            job = self.jobs.get(job_id)
            if job is not None and job_id not in seen:
                due.append(job)
                seen.add(job_id)
        return due

    async def _poll_account(self, provider: str, due: list[Job]) -> None:
        adapter = self.ctx.adapters[provider]
        asked = due
        if adapter.batch_poll and len(due) >= 1:
            asked = [j for j in self.jobs.values() if j.provider == provider]
        try:
            statuses = await adapter.poll(asked)
        except ProviderError as exc:
            log.warning("poll_failed", provider=provider, error=str(exc), jobs=len(due))
            for job in due:
                self.polls_done[job.id] = self.polls_done.get(job.id, 0) + 1
                await self._reschedule(job)
            return
        self.ctx.stats.polls += 1
        due_ids = {j.id for j in due}
        changes = []
        for job in asked:
            status = statuses.get(job.remote_id or "")
            if job.id in due_ids:
                self.polls_done[job.id] = self.polls_done.get(job.id, 0) + 1
            if status is None:
                if job.id in due_ids:
                    await self._reschedule(job)
                continue
            changes.append(self._apply(job, status, due=job.id in due_ids))
        # Concurrently, so the ledger commits the jobs this poll finished as one group.
        await asyncio.gather(*changes)

    async def _apply(self, job: Job, status: RemoteStatus, *, due: bool) -> None:
        if status.state == RemoteState.DONE:
            self.forget(job.id)
            await self.on_done(job)
        elif status.state in (RemoteState.FAILED, RemoteState.CANCELLED, RemoteState.UNKNOWN):
            self.forget(job.id)
            await self.on_ended(job, status)
        elif due:
            await self._reschedule(job)

    async def _reschedule(self, job: Job) -> None:
        if job.id in self.jobs:
            heapq.heappush(self._heap, (time.monotonic() + await self._delay(job), job.id))
