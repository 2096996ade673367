"""On start, before any new work is claimed: reconcile whatever a dead process left mid-flight.

SUBMITTING jobs are looked up at the provider (adapter.find): adopted if the remote job exists,
returned to PENDING only when it provably does not. RUNNING jobs resume polling, FETCHING jobs
resume downloading (from the start; a partial file never had its final name).
"""

from __future__ import annotations

from collections import defaultdict

import structlog

from orchestrator.domain import Job, JobState
from orchestrator.engine.context import Context
from orchestrator.engine.dispatcher import Dispatcher
from orchestrator.engine.fetcher import Fetcher
from orchestrator.engine.poller import Poller
from orchestrator.errors import ProviderError

log = structlog.get_logger(__name__)


async def reconcile_submitting(ctx: Context, dispatcher: Dispatcher, jobs: list[Job]) -> None:
    by_provider: dict[str, list[Job]] = defaultdict(list)
    for job in jobs:
        by_provider[job.provider].append(job)
    for provider, group in by_provider.items():
        adapter = ctx.adapters.get(provider)
        if adapter is None:
            continue
        try:
            known = await ctx.ledger.known_remote_ids(provider)
            found = await adapter.find(group, known)
        except ProviderError as exc:
            log.warning("reconcile_failed", provider=provider, jobs=len(group), error=str(exc))
            for job in group:
                dispatcher.unresolved[job.id] = job
            continue
        for job in group:
            if job.id not in found:
                dispatcher.unresolved[job.id] = job
                continue
            remote_id = found[job.id]
            log.info("reconciled", job_id=job.id, adopted=remote_id is not None)
            if remote_id is not None:
                await dispatcher.settle(job, remote_id, error="")
            else:
                await _return_to_pending(ctx, job, dispatcher)


async def _return_to_pending(ctx: Context, job: Job, dispatcher: Dispatcher) -> None:
    """Nothing was created: the attempt never happened."""
    dispatcher.unresolved.pop(job.id, None)
    ctx.budgets[job.provider].on_unreserve()
    await ctx.ledger.transition(
        job,
        JobState.SUBMITTING,
        JobState.PENDING,
        reason="recovered: no remote job was created",
        refund_quota=True,
        attempts=max(0, job.attempts - 1),
    )


async def recover(ctx: Context, dispatcher: Dispatcher, poller: Poller, fetcher: Fetcher) -> None:
    jobs = await ctx.ledger.in_flight()
    submitting = [j for j in jobs if j.state == JobState.SUBMITTING]
    for job in jobs:
        if job.state == JobState.RUNNING:
            await poller.track(job, now=True)
        elif job.state == JobState.FETCHING:
            fetcher.start(job)
    if submitting:
        await reconcile_submitting(ctx, dispatcher, submitting)
    log.info(
        "recovered",
        submitting=len(submitting),
        running=sum(j.state == JobState.RUNNING for j in jobs),
        fetching=sum(j.state == JobState.FETCHING for j in jobs),
    )
