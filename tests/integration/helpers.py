from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path

from orchestrator.config import Config
from orchestrator.domain import Job, JobState, Part
from orchestrator.engine.daemon import Daemon
from orchestrator.ledger.store import Ledger


async def run_once(cfg: Config, timeout: float = 30.0, **kw: bool) -> int:
    async with asyncio.timeout(timeout):
        return await Daemon(cfg, once=kw.get("once", True), exit_when_idle=True).run()


async def start(daemon: Daemon) -> asyncio.Task[int]:
    """Run the daemon in the background; return once it is ready (ledger migrated, recovered)."""
    task = asyncio.create_task(daemon.run())
    ready = asyncio.create_task(daemon.ready.wait())
    await asyncio.wait({task, ready}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()
    return task


async def stop_hard(daemon: Daemon, task: asyncio.Task[int]) -> None:
    """Stop like a crash would, as far as the ledger can tell: work in flight is cancelled
    where it stands and nothing more is written for it."""
    daemon.stop()
    daemon.worker.cancel_all()
    await asyncio.wait_for(task, 15)


async def all_jobs(cfg: Config) -> list[Job]:
    ledger = Ledger(cfg.ledger.url)
    try:
        return await ledger.list_jobs(oldest_first=True)
    finally:
        await ledger.close()


async def job_parts(cfg: Config, job_id: int) -> list[Part]:
    """A job's parts as the ledger holds them."""
    ledger = Ledger(cfg.ledger.url)
    try:
        return await ledger.parts(job_id)
    finally:
        await ledger.close()


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def wait_for_jobs(
    cfg: Config, predicate: Callable[[list[Job]], bool], timeout: float = 15.0
) -> list[Job]:
    async with asyncio.timeout(timeout):
        while True:
            jobs = await all_jobs(cfg)
            if predicate(jobs):
                return jobs
            await asyncio.sleep(0.05)


def assert_result_intact(job: Job) -> None:
    assert job.state == JobState.SUCCEEDED, (job.state, job.error)
    assert job.result_path is not None
    data = Path(job.result_path).read_bytes()
    assert len(data) == job.result_bytes
    assert hashlib.sha256(data).hexdigest() == job.result_sha256
    leftovers = list(Path(job.result_path).parent.glob(".*.part"))
    assert leftovers == []
