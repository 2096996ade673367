"""One daemon run in this (pinned) process: enqueue N jobs, run until idle, print JSON."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from bench.common import pin, rss_peak_mib
from orchestrator.config import load_config
from orchestrator.engine.daemon import Daemon
from orchestrator.ledger import migrate
from orchestrator.ledger.store import Ledger
from orchestrator.scheduler import enqueue_run, utcnow


async def main(config: Path, jobs: int) -> dict[str, float]:
    cfg = load_config(config)
    pipeline = cfg.pipeline("bench")
    ledger = Ledger(cfg.ledger.url)
    await migrate.upgrade(ledger)
    now = utcnow()
    await asyncio.gather(
        *(
            enqueue_run(ledger, pipeline, fire_time=now, key=f"bench:{i}", reason="bench")
            for i in range(jobs)
        )
    )
    await ledger.close()
    daemon = Daemon(cfg, exit_when_idle=True)
    t0 = time.perf_counter()
    task = asyncio.create_task(daemon.run())
    await daemon.ready.wait()
    t_ready = time.perf_counter()
    code = await task
    t1 = time.perf_counter()
    return {
        "exit_code": code,
        "ready_s": t_ready - t0,
        "run_s": t1 - t_ready,
        "jobs_per_s": jobs / (t1 - t_ready),
        "succeeded": daemon.ctx.stats.finished.get("SUCCEEDED", 0),
        "polls": daemon.ctx.stats.polls,
        "ledger_batches": daemon.ledger.batches,
        "ledger_ops": daemon.ledger.ops,
        "peak_rss_mib": rss_peak_mib(),
    }


if __name__ == "__main__":
    pin(0)
    from orchestrator.logging import configure

    configure(json=True, level="WARNING")
    result = asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
    print(json.dumps(result))
