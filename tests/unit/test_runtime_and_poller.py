"""Process tuning and the poller's intake, without a network: the garbage collector settings the
daemon's own process takes, and a submitted job that is tracked even when its pipeline's
duration history cannot be read."""

from __future__ import annotations

import asyncio
import gc
import random
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from orchestrator.config import PollConfig
from orchestrator.domain import Job, JobState
from orchestrator.engine.poller import Poller
from orchestrator.runtime import GC_THRESHOLDS, tune_gc


def test_tune_gc_freezes_start_up_objects_and_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 10_000  # modules, classes, this test session
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


class _Unreadable:
    async def durations(self, pipeline: str, limit: int = 50) -> list[float]:
        raise OSError("database is locked")


def _poller() -> Poller:
    ctx: Any = SimpleNamespace(
        ledger=_Unreadable(),
        cfg=SimpleNamespace(providers={"clari": SimpleNamespace(poll=PollConfig())}),
        rng=random.Random(1),
        may_call=lambda account: True,  # every account's lease held (one daemon)
    )

    async def nothing(*_: object) -> None:
        return None

    return Poller(ctx, nothing, nothing)


async def test_a_job_is_tracked_even_when_its_history_cannot_be_read() -> None:
    poller = _poller()
    job = Job(
        id=7,
        pipeline="daily",
        kind="clari.forecast_export",
        provider="clari",
        state=JobState.RUNNING,
        remote_id="r7",
        submitted_at=datetime.now(UTC),
    )
    poller.add(job)  # no schedule cached yet: tracked by a task once the history is tried
    for _ in range(20):
        if 7 in poller.jobs:
            break
        await asyncio.sleep(0.01)
    assert 7 in poller.jobs
    assert [job_id for _, job_id in poller._heap] == [7]  # scheduled by age alone


async def test_a_poll_that_raises_anything_is_logged_and_retried_not_fatal() -> None:
    """`["not","an","object"]` from a status call once raised AttributeError out of the poll
    loop and ended the daemon (and again on every restart). Whatever a poll raises, the loop
    goes on and the account's due jobs are polled again later."""
    poller = _poller()
    polls = [0]

    class Broken:
        batch_poll = False

        async def poll(self, remote_ids: list[str]) -> dict[str, Any]:
            polls[0] += 1
            raise AttributeError("'list' object has no attribute 'get'")

    poller.ctx.adapters = {"clari": Broken()}
    poller.ctx.stopping = asyncio.Event()
    job = Job(
        id=8,
        pipeline="daily",
        kind="clari.forecast_export",
        provider="clari",
        state=JobState.RUNNING,
        remote_id="r8",
        submitted_at=datetime.now(UTC),
    )
    await poller.track(job, now=True)
    run = asyncio.create_task(poller.run())
    for _ in range(200):
        if polls[0] >= 1 and poller._heap:
            break
        await asyncio.sleep(0.01)
    assert not run.done(), run.exception() if run.done() else None
    assert polls[0] >= 1
    assert [job_id for _, job_id in poller._heap] == [8]  # polled again later
    poller.ctx.stopping.set()
    await asyncio.wait_for(run, 5)
