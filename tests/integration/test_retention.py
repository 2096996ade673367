"""Retention on a real ledger and real result files: `prune --dry-run` deletes nothing, the
daemon's daily run deletes what is old, keeps the newest success and what a pending import
reads, and says what it freed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from sqlalchemy import update

from orchestrator.config import Config
from orchestrator.engine.daemon import Daemon
from orchestrator.ledger.store import Ledger, jobs_t, utcnow
from orchestrator.retention import LAST_RUN
from orchestrator.simulator.server import SimulatorServer
from tests.acceptance.helpers import cli
from tests.conftest import forecast
from tests.integration.helpers import all_jobs, run_once, start


async def age(ledger: Ledger, job_id: int, days: int) -> None:
    when = (utcnow() - timedelta(days=days)).replace(tzinfo=None)
    await ledger.run_write(
        lambda conn: conn.execute(
            update(jobs_t).where(jobs_t.c.id == job_id).values(finished_at=when)
        )
    )


async def test_prune_dry_run_then_daily_run(
    make_config: Callable[..., Config], sim: SimulatorServer, tmp_path: Path
) -> None:
    cfg = make_config([{**forecast("daily"), "schedule": "0 6 * * *"}])
    for _ in range(3):
        assert await run_once(cfg) == 0
    ledger = Ledger(cfg.ledger.url)
    try:
        old = await ledger.enqueue(
            pipeline="daily",
            kind="clari.forecast_export",
            provider="clari",
            params={},
            idempotency_key="old",
            fire_time=None,
            max_attempts=1,
        )
        assert old == 4 and await ledger.request_cancel(old) is not None
        for job_id, days in ((1, 100), (2, 50), (3, 40), (4, 500)):
            await age(ledger, job_id, days)
        jobs = {j.id: j for j in await all_jobs(cfg)}
        reads = await ledger.enqueue(  # an import queued to read job 1's (old) result
            pipeline="to-crm",
            kind="claravine.submission",
            provider="claravine",
            params={"source": {"pipeline": "daily"}, "file": jobs[1].result_path},
            idempotency_key="import",
            fire_time=None,
            max_attempts=1,
        )
        await ledger.request_cancel(reads or 0)  # keep the daemon off it ...
        await ledger.run_write(  # ... but leave it pending, as if waiting for its turn
            lambda conn: conn.execute(
                update(jobs_t)
                .where(jobs_t.c.id == reads)
                .values(state="PENDING", cancel_requested=True)
            )
        )
    finally:
        await ledger.close()
    path = cfg.source
    assert path is not None
    config_text = path.read_text() + '[retention]\nresults = "30d"\njobs = "400d"\n'
    path.write_text(config_text.replace("[web]\nport = 0", "[web]\nenabled = false"))

    dry = cli("prune", "--dry-run", "--json", "--config", str(path))
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["files"] == [jobs[2].result_path] and plan["job_ids"] == [4]
    assert plan["result_bytes"] == jobs[2].result_bytes and plan["freed_bytes"] == 0
    assert plan["kept_newest_success"] == [3] and plan["kept_for_pending_import"] == [1]
    assert all(Path(j.result_path or "").is_file() for j in jobs.values() if j.result_path)

    from orchestrator.config import load_config

    daemon = Daemon(load_config(path))
    task = await start(daemon)
    try:
        async with asyncio.timeout(15):
            while await daemon.ledger.ops_value(LAST_RUN) is None:
                await asyncio.sleep(0.05)
        assert not Path(jobs[2].result_path or "").exists()
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 15)
    after = {j.id: j for j in await all_jobs(cfg)}
    assert set(after) == {1, 2, 3, reads}  # job 4 is gone, with its transitions
    assert after[2].result_path is None and after[2].state.value == "SUCCEEDED"
    assert Path(after[1].result_path or "").is_file() and Path(after[3].result_path or "").is_file()

    again = json.loads(cli("prune", "--json", "--config", str(path), check=True).stdout)
    assert again["files"] == [] and again["job_ids"] == [] and again["freed_bytes"] == 0
    text = cli("prune", "--config", str(path), check=True).stdout
    assert "removed 0 result file(s) (0 bytes freed) and 0 finished job(s)" in text
