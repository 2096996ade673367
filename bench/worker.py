"""Daemon-side scenarios, each run in its own process pinned to core 0; prints one JSON line.

python -m bench.worker e2e CONFIG N          N jobs end to end, run until idle
python -m bench.worker inflight CONFIG N     N jobs already RUNNING: start-up time, RSS
python -m bench.worker download CONFIG       one big result: RSS growth and MiB/s
python -m bench.worker slots CONFIG N        N jobs against a concurrency limit: timings
python -m bench.worker http_floor CONFIG N   the floor: N x (POST + GET of the result) with plain
                                             aiohttp, no ledger, no files, same concurrency
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import http_json, pin, rss_now_mib, rss_peak_mib
from orchestrator.config import Config, load_config
from orchestrator.engine.daemon import Daemon
from orchestrator.ledger import migrate
from orchestrator.ledger.store import Ledger
from orchestrator.scheduler import enqueue_run, utcnow


async def _enqueue(cfg: Config, n: int) -> None:
    pipeline = cfg.pipeline("bench")
    ledger = Ledger(cfg.ledger.url)
    await migrate.upgrade(ledger)
    now = utcnow()
    for start in range(0, n, 1000):
        await asyncio.gather(
            *(
                enqueue_run(ledger, pipeline, fire_time=now, key=f"bench:{i}", reason="bench")
                for i in range(start, min(n, start + 1000))
            )
        )
    await ledger.close()


async def e2e(cfg: Config, n: int) -> dict[str, Any]:
    await _enqueue(cfg, n)
    daemon = Daemon(cfg, exit_when_idle=True, tune_gc=True)
    t0 = time.perf_counter()
    task = asyncio.create_task(daemon.run())
    await daemon.ready.wait()
    t_ready = time.perf_counter()
    code = await task
    elapsed = time.perf_counter() - t_ready
    return {
        "exit_code": code,
        "ready_s": t_ready - t0,
        "run_s": elapsed,
        "jobs_per_s": n / elapsed,
        "succeeded": daemon.ctx.stats.finished.get("SUCCEEDED", 0),
        "ledger_ops_per_commit": daemon.ledger.ops / max(1, daemon.ledger.batches),
        "peak_rss_mib": rss_peak_mib(),
        "cpu_s": time.process_time(),
    }


def _seed_running(cfg: Config, remote_ids: list[str]) -> None:
    """N jobs a previous process left RUNNING, written straight into the ledger."""
    db = cfg.ledger.url.split("///", 1)[1]
    stamp = datetime.now(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
    params = json.dumps({"forecastId": "fc", "timePeriod": "2026_Q4", "exportFormat": "CSV"})
    rows = [
        (
            "bench",
            "clari.forecast_export",
            "clari",
            "RUNNING",
            params,
            f"seed:{i}",
            rid,
            1,
            3,
            0,
            stamp,
            stamp,
            stamp,
            0,
        )
        for i, rid in enumerate(remote_ids)
    ]
    con = sqlite3.connect(db)
    con.executemany(
        "INSERT INTO jobs (pipeline, kind, provider, state, params, idempotency_key, remote_id, "
        "attempts, max_attempts, polls, created_at, updated_at, submitted_at, cancel_requested) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    con.commit()
    con.close()


async def inflight(cfg: Config) -> dict[str, Any]:
    """The ledger already holds N RUNNING jobs (seeded by bench.run in another process, so the
    seeding itself does not count): how fast is the daemon ready, and how big is it."""
    rss_before = rss_now_mib()
    daemon = Daemon(cfg, tune_gc=True)
    t0 = time.perf_counter()
    task = asyncio.create_task(daemon.run())
    await daemon.ready.wait()
    ready = time.perf_counter() - t0
    tracked = len(daemon.poller)
    await asyncio.sleep(3.0)  # steady state: tracked, scheduled, waiting for their polls
    rss_steady = rss_now_mib()
    daemon.stop()
    await task
    return {
        "ready_s": ready,
        "tracked": tracked,
        "rss_before_mib": rss_before,
        "rss_steady_mib": rss_steady,
        "peak_rss_mib": rss_peak_mib(),
    }


def seed_inflight(config: Path, n: int) -> None:
    """python -m bench.worker seed CONFIG N: N long jobs at the simulator and RUNNING in the
    ledger, as a previous process would have left them."""
    cfg = load_config(config)

    async def migrate_only() -> None:
        ledger = Ledger(cfg.ledger.url)
        await migrate.upgrade(ledger)
        await ledger.close()

    asyncio.run(migrate_only())
    base = cfg.providers["clari"].base_url
    ids = http_json(base + "/_sim/seed", {"count": n, "duration": 3600})["jobIds"]
    _seed_running(cfg, ids)


async def download(cfg: Config) -> dict[str, Any]:
    await _enqueue(cfg, 1)
    daemon = Daemon(cfg, exit_when_idle=True, tune_gc=True)
    task = asyncio.create_task(daemon.run())
    await daemon.ready.wait()
    rss_ready = rss_now_mib()
    t0 = time.perf_counter()
    code = await task
    elapsed = time.perf_counter() - t0
    ledger = Ledger(cfg.ledger.url)
    (job,) = await ledger.list_jobs()
    await ledger.close()
    size = job.result_bytes or 0
    return {
        "exit_code": code,
        "bytes": size,
        "seconds": elapsed,
        "mib_per_s": size / 2**20 / elapsed,
        "rss_ready_mib": rss_ready,
        "peak_rss_mib": rss_peak_mib(),
        "rss_growth_mib": rss_peak_mib() - rss_ready,
    }


async def slots(cfg: Config, n: int) -> dict[str, Any]:
    await _enqueue(cfg, n)
    daemon = Daemon(cfg, exit_when_idle=True, tune_gc=True)
    task = asyncio.create_task(daemon.run())
    code = await task
    ledger = Ledger(cfg.ledger.url)
    jobs = await ledger.list_jobs(oldest_first=True)
    events: list[tuple[float, str, int]] = []
    for job in jobs:
        for t in await ledger.transitions(job.id):
            at = datetime.fromisoformat(str(t["at"]).replace("Z", "+00:00")).timestamp()
            events.append((at, str(t["to"]), job.id))
    await ledger.close()
    return {"exit_code": code, "events": events, "remote": {j.id: j.remote_id for j in jobs}}


async def http_floor(cfg: Config, n: int) -> dict[str, Any]:
    """What aiohttp alone costs for the two requests every job makes (submit, download), at the
    daemon's concurrency, against the same simulator: the ceiling for jobs/s on this core."""
    import aiohttp

    provider = cfg.providers["clari"]
    headers = {"apikey": provider.secret()}
    body = {"timePeriod": "2026_Q4", "exportFormat": "CSV"}
    sem = asyncio.Semaphore(cfg.daemon.max_submits)
    async with aiohttp.ClientSession(
        base_url=provider.base_url.rstrip("/") + "/",
        headers=headers,
        connector=aiohttp.TCPConnector(limit=100),
    ) as session:

        async def one() -> None:
            async with sem:
                async with session.post("export/forecast/fc", json=body) as resp:
                    job_id = (await resp.json())["jobId"]
                async with session.get(f"export/jobs/{job_id}/results") as resp:
                    await resp.read()

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        elapsed = time.perf_counter() - t0
    return {"jobs_per_s": n / elapsed, "run_s": elapsed}


def main() -> None:
    pin(0)
    from orchestrator.logging import configure

    configure(json=True, level=os.environ.get("BENCH_LOG_LEVEL", "WARNING"))  # set by bench.run
    scenario = sys.argv[1]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    if scenario == "seed":
        seed_inflight(Path(sys.argv[2]), n)
        print(json.dumps({"seeded": n}))
        return
    config = load_config(Path(sys.argv[2]))
    runners = {
        "e2e": lambda: e2e(config, n),
        "inflight": lambda: inflight(config),
        "download": lambda: download(config),
        "slots": lambda: slots(config, n),
        "http_floor": lambda: http_floor(config, n),
    }
    if os.environ.get("BENCH_UVLOOP"):
        import uvloop

        uvloop.install()
    print(json.dumps(asyncio.run(runners[scenario]())))


if __name__ == "__main__":
    main()
