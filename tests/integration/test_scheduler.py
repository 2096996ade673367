"""The daemon's scheduler: interval fires become jobs, idempotently; missed runs are caught up."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

from orchestrator.config import Config
from orchestrator.domain import JobState
from orchestrator.engine.daemon import Daemon
from orchestrator.ledger.store import Ledger, utcnow
from orchestrator.scheduler import enqueue_run, scheduled_key
from orchestrator.simulator.server import SimulatorServer
from tests.conftest import BOTH_LEDGERS, forecast
from tests.integration.helpers import all_jobs, start, wait_for_jobs


@BOTH_LEDGERS
async def test_interval_schedule_enqueues_and_runs(
    make_config: Callable[..., Config], sim: SimulatorServer
) -> None:
    cfg = make_config([{**forecast("tick"), "schedule": "every 1s"}])
    daemon = Daemon(cfg)
    task = await start(daemon)
    jobs = await wait_for_jobs(
        cfg, lambda js: sum(j.state == JobState.SUCCEEDED for j in js) >= 2, timeout=20
    )
    daemon.stop()
    assert await asyncio.wait_for(task, 15) == 0
    jobs = await all_jobs(cfg)
    fires = [j.fire_time for j in jobs]
    assert len(fires) == len(set(fires))  # one job per fire time
    assert all(f is not None and f.microsecond == 0 for f in fires)


@BOTH_LEDGERS
async def test_missed_run_is_caught_up_once_at_start(
    make_config: Callable[..., Config], sim: SimulatorServer
) -> None:
    cfg = make_config([{**forecast("hourly"), "schedule": "every 1h", "missed_runs": "catch_up"}])
    pipeline = cfg.pipeline("hourly")
    ledger = Ledger(cfg.ledger.url)
    from orchestrator.ledger import migrate

    await migrate.upgrade(ledger)
    last = utcnow().replace(minute=0, second=0, microsecond=0) - timedelta(hours=5)
    old = await enqueue_run(
        ledger, pipeline, fire_time=last, key=scheduled_key("hourly", last), reason="scheduled"
    )
    assert old is not None
    await ledger.request_cancel(old)
    await ledger.close()

    for _ in range(2):  # a second start must not enqueue the same missed run again
        daemon = Daemon(cfg)
        task = await start(daemon)
        await wait_for_jobs(cfg, lambda js: len(js) >= 2 and js[-1].state == JobState.SUCCEEDED)
        daemon.stop()
        await asyncio.wait_for(task, 15)
    jobs = await all_jobs(cfg)
    assert len(jobs) == 2
    assert jobs[1].fire_time == utcnow().replace(minute=0, second=0, microsecond=0)
