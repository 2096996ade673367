"""Backfill against a live daemon whose scheduler fires every second: the same fire time is
never enqueued twice, whoever gets there first. And missed_runs = "all" at start."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from datetime import timedelta

from orchestrator import backfill as bf
from orchestrator.config import Config
from orchestrator.domain import JobState
from orchestrator.engine.daemon import Daemon
from orchestrator.ledger import migrate
from orchestrator.ledger.store import Ledger, utcnow
from orchestrator.scheduler import enqueue_run, scheduled_key
from orchestrator.simulator.server import SimulatorServer
from tests.conftest import forecast
from tests.integration.helpers import all_jobs, start, wait_for_jobs


async def test_backfill_is_idempotent_with_the_running_scheduler(
    make_config: Callable[..., Config], sim: SimulatorServer
) -> None:
    cfg = make_config([{**forecast("tick", timePeriod="{{ quarter }}"), "schedule": "every 1s"}])
    p = cfg.pipeline("tick")
    begin = utcnow().replace(microsecond=0) - timedelta(seconds=8)
    daemon = Daemon(cfg)
    task = await start(daemon)
    try:
        await wait_for_jobs(cfg, lambda js: len(js) >= 3)  # the scheduler is firing
        ledger = Ledger(cfg.ledger.url)
        try:
            first = await bf.plan(cfg, ledger, p, begin, utcnow() + timedelta(hours=1))
            assert first.clamped and first.taken  # the scheduler's fires are recognised
            assert len(first.new) >= 8 - 1
            await bf.enqueue(ledger, first)
            again = await bf.plan(cfg, ledger, p, begin, first.end)
            assert again.new == [] and again.taken == set(first.fires)
        finally:
            await ledger.close()
        await wait_for_jobs(cfg, lambda js: all(j.state == JobState.SUCCEEDED for j in js), 30)
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 15)
    jobs = await all_jobs(cfg)
    per_fire = Counter(j.fire_time for j in jobs)
    assert max(per_fire.values()) == 1  # one job per fire time, scheduled or backfilled
    assert set(first.fires) <= set(per_fire)
    backfilled = [j for j in jobs if j.id in first.job_ids]
    assert len(backfilled) == len(first.new)
    assert all(j.idempotency_key == scheduled_key("tick", j.fire_time) for j in backfilled)  # type: ignore[arg-type]
    assert {j.params["timePeriod"] for j in backfilled} == {
        f"{begin.year}_Q{(begin.month - 1) // 3 + 1}"
    }


async def test_missed_runs_all_enqueues_up_to_max_catch_up_at_start(
    make_config: Callable[..., Config], sim: SimulatorServer
) -> None:
    cfg = make_config(
        [{**forecast("hourly"), "schedule": "every 1h", "missed_runs": "all", "max_catch_up": 3}]
    )
    ledger = Ledger(cfg.ledger.url)
    await migrate.upgrade(ledger)
    hour = utcnow().replace(minute=0, second=0, microsecond=0)
    last = hour - timedelta(hours=5)
    old = await enqueue_run(
        ledger,
        cfg.pipeline("hourly"),
        fire_time=last,
        key=scheduled_key("hourly", last),
        reason="scheduled",
    )
    assert old is not None
    await ledger.request_cancel(old)
    await ledger.close()

    for _ in range(2):  # a second start enqueues nothing more
        daemon = Daemon(cfg)
        task = await start(daemon)
        await wait_for_jobs(cfg, lambda js: len(js) == 4 and js[-1].terminal, 20)
        daemon.stop()
        await asyncio.wait_for(task, 15)
    jobs = await all_jobs(cfg)
    assert [j.fire_time for j in jobs[1:]] == [hour - timedelta(hours=n) for n in (2, 1, 0)]
    assert all(j.state == JobState.SUCCEEDED for j in jobs[1:])
