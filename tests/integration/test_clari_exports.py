"""The daemon end to end against the Clari simulator over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.config import Config
from orchestrator.domain import JobState
from orchestrator.engine.daemon import Daemon
from orchestrator.ledger.store import Ledger
from orchestrator.simulator.server import SimulatorServer
from tests.conftest import BOTH_LEDGERS, forecast
from tests.integration.helpers import (
    all_jobs,
    assert_result_intact,
    run_once,
    start,
    wait_for,
    wait_for_jobs,
)

KINDS = [
    forecast("forecast-csv"),
    forecast("forecast-json", exportFormat="JSON", typesToExport=["forecast", "quota"]),
    {
        "name": "activity",
        "kind": "clari.activity_export",
        "params": {
            "activityTypes": ["MEETING"],
            "startDate": "{{ day-1 | datetime }}",
            "endDate": "{{ day | datetime }}",
        },
    },
    {
        "name": "audit",
        "kind": "clari.audit_export",
        "params": {"dateFrom": "{{ week_start-1 }}", "sessionType": "WEB"},
    },
]


@pytest.mark.parametrize("pipeline", KINDS, ids=[p["name"] for p in KINDS])
async def test_each_export_kind_end_to_end(
    make_config: Callable[..., Config], sim: SimulatorServer, pipeline: dict[str, object]
) -> None:
    cfg = make_config([pipeline])
    assert await run_once(cfg) == 0
    (job,) = await all_jobs(cfg)
    assert_result_intact(job)
    assert job.remote_id in sim.sims.clari.jobs
    assert job.result_rows == sim.sims.clari.config.result_rows
    path = Path(job.result_path or "")
    expected = sim.sims.clari.result_bytes(sim.sims.clari.jobs[job.remote_id or ""])
    assert path.read_bytes() == expected
    if path.suffix == ".csv":
        rows = list(csv.reader(path.read_text().splitlines()))
        assert rows[0][0] == "User" and len(rows) == job.result_rows + 1
    else:
        json.loads(path.read_bytes())
    assert sim.sims.clari.stats["created"] == 1


async def test_concurrency_limit_of_two_is_never_exceeded(
    make_config: Callable[..., Config], sim: SimulatorServer
) -> None:
    sim.sims.clari.config.concurrent_limit = 2
    cfg = make_config([forecast(f"f{i}") for i in range(10)])
    assert await run_once(cfg) == 0
    jobs = await all_jobs(cfg)
    assert [j.state for j in jobs] == [JobState.SUCCEEDED] * 10
    stats = sim.sims.clari.stats
    assert stats["max_active"] == 2  # used fully, never exceeded
    assert stats["rejected_limits"] == 0  # the daemon knew the limit before the provider said
    assert stats["created"] == 10


async def test_config_cap_below_the_provider_limit(
    make_config: Callable[..., Config], sim: SimulatorServer
) -> None:
    sim.sims.clari.config.concurrent_limit = 5
    cfg = make_config([forecast(f"f{i}") for i in range(6)], provider={"concurrency": 1})
    assert await run_once(cfg) == 0
    assert sim.sims.clari.stats["max_active"] == 1


@BOTH_LEDGERS
async def test_quota_exhaustion_mid_run_keeps_jobs_pending_without_spending_attempts(
    make_config: Callable[..., Config], sim: SimulatorServer
) -> None:
    sim.sims.clari.config.monthly_quota = 3
    cfg = make_config([forecast(f"f{i}") for i in range(5)])
    daemon = Daemon(cfg, once=True)
    task = await start(daemon)
    jobs = await wait_for_jobs(cfg, lambda js: sum(j.state == JobState.SUCCEEDED for j in js) == 3)
    await asyncio.sleep(0.5)
    daemon.stop()
    assert await task == 0
    jobs = await all_jobs(cfg)
    waiting = [j for j in jobs if j.state != JobState.SUCCEEDED]
    assert len(waiting) == 2
    assert all(j.state == JobState.PENDING and j.attempts == 0 for j in waiting)
    assert sim.sims.clari.stats["created"] == 3


@BOTH_LEDGERS
async def test_provider_says_full_puts_job_back_to_pending(
    make_config: Callable[..., Config], sim: SimulatorServer
) -> None:
    """Another user of the org takes the last slot between our limits check and our POST."""
    sim.sims.clari.config.concurrent_limit = 1
    cfg = make_config([forecast("f0")], provider={"limits_refresh": "0.2s"})
    daemon = Daemon(cfg, once=True)
    task = await start(daemon)
    # The rival's job occupies the only slot for a while.
    sim.sims.clari.config.duration = 1.0
    rival = await _create_directly(sim)
    sim.sims.clari.config.duration = 0.2
    assert await asyncio.wait_for(task, 20) == 0
    (job,) = await all_jobs(cfg)
    assert job.state == JobState.SUCCEEDED and job.attempts == 1
    assert job.remote_id != rival


async def _create_directly(sim: SimulatorServer) -> str:
    import aiohttp

    from tests.conftest import API_KEY

    async with (
        aiohttp.ClientSession() as s,
        s.post(
            sim.base_url("clari") + "/export/activity",
            headers={"apikey": API_KEY},
            json={"startDate": "2026-01-01T00:00:00Z", "endDate": "2026-01-02T00:00:00Z"},
        ) as r,
    ):
        return str((await r.json())["jobId"])


async def test_429_and_5xx_storm_completes_without_duplicates(
    make_config: Callable[..., Config], sim: SimulatorServer
) -> None:
    sim.sims.clari.faults.update({"rate_429": 0.3, "rate_5xx": 0.2, "retry_after": 0.05})
    sim.sims.clari.faults.rng.seed(1)
    cfg = make_config([forecast(f"f{i}") for i in range(6)], provider={"retries": 8})
    assert await run_once(cfg, timeout=60) == 0
    jobs = await all_jobs(cfg)
    for job in jobs:
        assert_result_intact(job)
    assert sim.sims.clari.stats["created"] == 6
    assert sim.sims.clari.faults.counts["429"] > 0 and sim.sims.clari.faults.counts["5xx"] > 0


@BOTH_LEDGERS
async def test_unanswered_submit_is_adopted_not_resubmitted(
    make_config: Callable[..., Config], sim: SimulatorServer
) -> None:
    """The job is created but the connection drops before the answer: the daemon must find the
    remote job rather than make a second export."""
    sim.sims.clari.config.lost_submit_rate = 1.0
    cfg = make_config([forecast("f0"), forecast("f1")], provider={"retries": 0})
    daemon = Daemon(cfg, once=True)
    task = await start(daemon)
    await wait_for(lambda: sim.sims.clari.stats["created"] >= 2)
    sim.sims.clari.config.lost_submit_rate = 0.0
    assert await asyncio.wait_for(task, 30) == 0
    jobs = await all_jobs(cfg)
    assert all(j.state == JobState.SUCCEEDED for j in jobs)
    assert sim.sims.clari.stats["created"] == 2
    assert {j.remote_id for j in jobs} == set(sim.sims.clari.jobs)


@BOTH_LEDGERS
async def test_failed_job_is_retried_then_succeeds(
    make_config: Callable[..., Config], sim: SimulatorServer
) -> None:
    sim.sims.clari.config.fail_rate = 1.0
    cfg = make_config([{**forecast("f0"), "max_attempts": 3}])
    daemon = Daemon(cfg, once=True)
    task = await start(daemon)
    await wait_for(lambda: sim.sims.clari.stats["created"] >= 1)
    sim.sims.clari.config.fail_rate = 0.0
    assert await asyncio.wait_for(task, 30) == 0
    (job,) = await all_jobs(cfg)
    assert job.state == JobState.SUCCEEDED
    assert job.attempts == 2
    assert sim.sims.clari.stats["created"] == 2
    ledger = Ledger(cfg.ledger.url)
    try:
        path = [t["to"] for t in await ledger.transitions(job.id)]
    finally:
        await ledger.close()
    assert path == [
        "PENDING",
        "SUBMITTING",
        "RUNNING",
        "RETRY_WAIT",
        "PENDING",
        "SUBMITTING",
        "RUNNING",
        "FETCHING",
        "SUCCEEDED",
    ]


async def test_job_that_keeps_failing_ends_failed_and_run_exits_1(
    make_config: Callable[..., Config], sim: SimulatorServer
) -> None:
    sim.sims.clari.config.fail_rate = 1.0
    cfg = make_config([{**forecast("f0"), "max_attempts": 2}])
    assert await run_once(cfg) == 1
    (job,) = await all_jobs(cfg)
    assert job.state == JobState.FAILED and job.attempts == 2
    assert "ended FAILED" in (job.error or "")


async def test_rejected_params_fail_at_once_with_the_providers_code(
    make_config: Callable[..., Config], sim: SimulatorServer
) -> None:
    cfg = make_config([forecast("f0", forecastId="no_such_forecast")])
    assert await run_once(cfg) == 1
    (job,) = await all_jobs(cfg)
    assert job.state == JobState.FAILED and job.attempts == 1
    assert "no_such_forecast_config" in (job.error or "")
    assert sim.sims.clari.stats["created"] == 0


@BOTH_LEDGERS
async def test_deadline_cancels_the_remote_job(
    make_config: Callable[..., Config], sim: SimulatorServer
) -> None:
    sim.sims.clari.config.duration = 30.0
    cfg = make_config([{**forecast("slow"), "deadline": "0.5s"}])
    assert await run_once(cfg) == 1
    (job,) = await all_jobs(cfg)
    assert job.state == JobState.FAILED and "deadline exceeded" in (job.error or "")
    remote = sim.sims.clari.jobs[job.remote_id or ""]
    assert remote.cancelled_status == "ABORTED"
    assert sim.sims.clari.stats["cancel_requests"] == 1


@BOTH_LEDGERS
async def test_cancel_request_from_another_process_cancels_at_the_provider(
    make_config: Callable[..., Config], sim: SimulatorServer
) -> None:
    sim.sims.clari.config.duration = 30.0
    cfg = make_config([forecast("slow")])
    daemon = Daemon(cfg, once=True)
    task = await start(daemon)
    jobs = await wait_for_jobs(cfg, lambda js: bool(js) and js[0].state == JobState.RUNNING)
    other = Ledger(cfg.ledger.url)  # what `orchestrator jobs cancel` does
    try:
        assert await other.request_cancel(jobs[0].id) == JobState.RUNNING
    finally:
        await other.close()
    assert await asyncio.wait_for(task, 15) == 0
    (job,) = await all_jobs(cfg)
    assert job.state == JobState.CANCELLED
    assert sim.sims.clari.jobs[job.remote_id or ""].cancelled_status in ("CANCELLED", "ABORTED")
    assert sim.sims.clari.quota_used(__import__("time").time()) == []  # cancelling freed quota


async def test_download_dropped_mid_stream_is_retried_never_truncated(
    make_config: Callable[..., Config], sim: SimulatorServer
) -> None:
    sim.sims.clari.config.download_drop_rate = 1.0
    sim.sims.clari.config.result_rows = 5000
    cfg = make_config([forecast("big")])
    daemon = Daemon(cfg, once=True)
    task = await start(daemon)
    await wait_for(lambda: sim.sims.clari.faults.counts["download_dropped"] >= 2, timeout=15)
    jobs = await all_jobs(cfg)
    assert jobs[0].state == JobState.FETCHING  # nothing marked done from a truncated body
    sim.sims.clari.config.download_drop_rate = 0.0
    assert await asyncio.wait_for(task, 30) == 0
    (job,) = await all_jobs(cfg)
    assert_result_intact(job)
    assert job.result_rows == 5000
    assert sim.sims.clari.stats["created"] == 1


async def test_batch_polling_uses_one_listing_for_many_jobs(
    make_config: Callable[..., Config], sim: SimulatorServer
) -> None:
    sim.sims.clari.config.concurrent_limit = 20
    sim.sims.clari.config.duration = 1.0
    cfg = make_config([forecast(f"f{i}") for i in range(20)])
    assert await run_once(cfg) == 0
    stats = sim.sims.clari.stats
    status_calls = stats["list_requests"] + stats["status_requests"]
    assert status_calls < 20  # fewer status requests than jobs


async def test_secret_never_reaches_ledger_or_errors(
    make_config: Callable[..., Config], sim: SimulatorServer, tmp_path: Path
) -> None:
    from tests.conftest import API_KEY

    sim.sims.clari.config.fail_rate = 1.0
    cfg = make_config(
        [{**forecast("f0"), "max_attempts": 1}, forecast("f1", forecastId="no_such_forecast")]
    )
    await run_once(cfg)
    db = Path(cfg.ledger.url.split("///", 1)[1])
    blob = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
    assert API_KEY.encode() not in blob
    for job in await all_jobs(cfg):
        assert API_KEY not in (job.error or "")


async def test_csv_rows_are_records_not_lines(
    make_config: Callable[..., Config], sim: SimulatorServer
) -> None:
    """A quoted field with a line break in it: 50 records, 60 lines."""
    sim.sims.clari.config.multiline_every = 5
    cfg = make_config([forecast("fc")])
    assert await run_once(cfg) == 0
    (job,) = await all_jobs(cfg)
    assert_result_intact(job)
    text = Path(job.result_path or "").read_text()
    assert text.count("\n") == 1 + 50 + 10
    assert job.result_rows == 50 == len(list(csv.reader(text.splitlines(keepends=True)))) - 1
