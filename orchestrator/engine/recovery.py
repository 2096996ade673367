"""On start, before any new work is claimed: reconcile whatever a dead process left mid-flight.

SUBMITTING jobs are looked up at the provider (adapter.find): adopted if a remote job provably
theirs exists, returned to PENDING only when it provably does not, and otherwise left waiting
(slot and ambiguity class held, the reason in the job's `error`) for `jobs adopt`/`jobs resubmit`.
RUNNING jobs resume polling, FETCHING jobs resume downloading (from the start; a partial file
never had its final name). Staged jobs (several remote calls, checkpointed as parts) resume in
the worker from their first unfinished part; one caught in SUBMITTING had made no call yet and
simply goes back to PENDING.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from orchestrator.domain import Job, JobState
from orchestrator.engine.context import Context
from orchestrator.engine.dispatcher import Dispatcher
from orchestrator.engine.fetcher import Fetcher
from orchestrator.engine.poller import Poller
from orchestrator.engine.worker import Worker
from orchestrator.providers import KINDS

log = structlog.get_logger(__name__)


async def reconcile_submitting(ctx: Context, dispatcher: Dispatcher, jobs: list[Job]) -> None:
    """Hand jobs caught in SUBMITTING to the dispatcher's reconciliation, one provider at a time.
    Jobs of a provider that cannot be asked now stay unresolved (their slot held) and are tried
    again by the daemon."""
    for job in jobs:
        if job.provider in ctx.adapters and job.id not in dispatcher.unresolved:
            dispatcher.add_unresolved(job)
    for provider in sorted({j.provider for j in jobs if j.provider in ctx.adapters}):
        await dispatcher.reconcile(provider)


async def recover(
    ctx: Context,
    dispatcher: Dispatcher,
    poller: Poller,
    fetcher: Fetcher,
    worker: Worker,
    accounts: Sequence[str] | None = None,
) -> None:
    """Every in-flight job (of `accounts`, when given: the leases a replica just took — a
    takeover is this same recovery, run while the other replicas keep working)."""
    submitting: list[Job] = []
    running = fetching = 0
    async for chunk in ctx.ledger.iter_in_flight(providers=accounts):
        for job in chunk:
            spec = KINDS.get(job.kind)
            if spec is not None and spec.staged and job.provider in ctx.adapters:
                if job.state == JobState.SUBMITTING:
                    await dispatcher.settle(job, None, error="")
                else:
                    worker.start(job)
                    running += 1
            elif job.state == JobState.RUNNING:
                await poller.track(job)  # on its own schedule: elapsed time counts from submit
                running += 1
            elif job.state == JobState.FETCHING:
                fetcher.start(job)
                fetching += 1
            else:
                submitting.append(job)
    if submitting:
        await reconcile_submitting(ctx, dispatcher, submitting)
    log.info(
        "recovered",
        accounts=accounts,
        submitting=len(submitting),
        running=running,
        fetching=fetching,
    )
