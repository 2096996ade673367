"""Recovery never guesses, and limits hold across restarts: the daemon against the Clari
simulator over real HTTP, crashes made by stopping it where it stands."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.config import Config
from orchestrator.domain import Job, JobState
from orchestrator.engine.daemon import Daemon
from orchestrator.ledger import migrate
from orchestrator.ledger.store import Ledger, utcnow
from orchestrator.simulator.server import SimulatorServer
from tests.conftest import API_KEY, forecast
from tests.integration.helpers import (
    all_jobs,
    assert_result_intact,
    run_once,
    start,
    stop_hard,
    wait_for,
    wait_for_jobs,
)


def _sent(job: Job) -> dict[str, Any]:
    """The body the daemon POSTs for a forecast job (forecastId goes in the path)."""
    return {k: v for k, v in job.params.items() if k != "forecastId" and v is not None}


def assert_own_export(sim: SimulatorServer, job: Job) -> None:
    remote = sim.sims.clari.jobs[job.remote_id or ""]
    assert remote.params == _sent(job), (job.pipeline, remote.params)


async def test_lost_answers_of_one_module_each_adopt_their_own_export(
    make_config: Callable[..., Config], sim: SimulatorServer
) -> None:
    """Every POST's answer is lost: submissions of the module go one at a time, each lost
    answer is reconciled to the one export made since, so each job gets its own params'."""
    sim.sims.clari.config.lost_submit_rate = 1.0
    pipelines = [forecast(f"fc-{i}", scopeId=f"scope-{i}") for i in range(4)]
    cfg = make_config(pipelines, provider={"retries": 0})
    task = await start(Daemon(cfg, once=True, exit_when_idle=True))
    await wait_for(lambda: sim.sims.clari.stats["created"] >= 4, timeout=20)
    sim.sims.clari.config.lost_submit_rate = 0.0
    assert await asyncio.wait_for(task, 30) == 0
    jobs = await all_jobs(cfg)
    assert len(jobs) == 4
    for job in jobs:
        assert_result_intact(job)
        assert_own_export(sim, job)
    assert sim.sims.clari.stats["created"] == 4
    assert sim.sims.clari.stats["rejected_limits"] == 0


async def _post_forecast(sim: SimulatorServer, body: dict[str, Any]) -> str:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            sim.base_url("clari") + "/export/forecast/fc_1", headers={"apikey": API_KEY}, json=body
        ) as r,
    ):
        return str((await r.json())["jobId"])


async def _caught_submitting(cfg: Config) -> list[Job]:
    """What an older daemon (one that submitted two forecasts at once) left at its crash:
    two jobs SUBMITTING, and a remote export made by each."""
    ledger = Ledger(cfg.ledger.url)
    try:
        await migrate.upgrade(ledger)
        await ledger.start()
        jobs = []
        for p in cfg.pipelines:
            job_id = await ledger.enqueue(
                pipeline=p.name,
                kind=p.kind,
                provider="clari",
                params=p.params,
                idempotency_key=f"old:{p.name}",
                fire_time=None,
                max_attempts=3,
                reason="test",
            )
            assert job_id is not None
            job = await ledger.get(job_id)
            assert job is not None
            await ledger.transition(
                job,
                JobState.PENDING,
                JobState.SUBMITTING,
                quota="clari",
                attempts=1,
                submitted_at=utcnow(),
            )
            jobs.append(job)
        return jobs
    finally:
        await ledger.close()


def _cli(cfg_path: str, *args: str) -> Any:
    result = CliRunner().invoke(cli, [*args, "--config", cfg_path, "--json"])
    if result.exit_code != 0:
        return result.exit_code, result.output
    start = result.output.index("{")  # after any log line (stderr is mixed in)
    return 0, json.JSONDecoder().raw_decode(result.output[start:])[0]


async def test_two_unresolved_submissions_of_one_module_wait_for_the_operator(
    make_config: Callable[..., Config], sim: SimulatorServer, tmp_path: Any
) -> None:
    cfg = make_config([forecast("fc-a", scopeId="scope-a"), forecast("fc-b", scopeId="scope-b")])
    cfg_path = str(tmp_path / "orchestrator.toml")
    job_a, job_b = await _caught_submitting(cfg)
    remote_b = await _post_forecast(sim, _sent(job_b))  # b's made first: oldest-first swaps them
    remote_a = await _post_forecast(sim, _sent(job_a))

    # Neither adopted nor resubmitted: both wait, saying why; `--exit-when-idle` exits 1.
    assert await run_once(cfg, once=False) == 1
    assert sim.sims.clari.stats["created"] == 2
    for job in await all_jobs(cfg):
        assert job.state == JobState.SUBMITTING and job.remote_id is None
        assert job.error is not None
        assert "ambiguous: 2 submissions of FORECAST unresolved at once" in job.error
        assert f"jobs adopt {job.id} REMOTE_ID" in job.error
    code, shown = await asyncio.to_thread(_cli, cfg_path, "jobs", "show", str(job_a.id))
    assert code == 0 and "ambiguous" in shown["error"]

    # The operator decides while a daemon runs: it notices, polls and fetches.
    daemon = Daemon(cfg)
    task = await start(daemon)
    try:
        code, out = await asyncio.to_thread(
            _cli, cfg_path, "jobs", "adopt", str(job_a.id), remote_a
        )
        assert code == 0 and out["state"] == "RUNNING"
        code, out = await asyncio.to_thread(
            _cli, cfg_path, "jobs", "adopt", str(job_b.id), remote_a
        )
        # One remote job, one owner. (Once a's is decided, b's export is the one candidate
        # left for b: the daemon's next look may adopt it before the operator does.)
        assert code == 2 and (f"belongs to job {job_a.id}" in out or "is RUNNING" in out), out
        if "belongs" in out:
            code, out = await asyncio.to_thread(
                _cli, cfg_path, "jobs", "adopt", str(job_b.id), remote_b
            )
            assert code == 0 or "is RUNNING" in out, out
        await wait_for_jobs(cfg, lambda js: all(j.state == JobState.SUCCEEDED for j in js))
    finally:
        daemon.stop()
        assert await asyncio.wait_for(task, 30) == 0
    for job in await all_jobs(cfg):
        assert_result_intact(job)
        assert_own_export(sim, job)
        assert job.error is None
    assert sim.sims.clari.stats["created"] == 2


async def test_operator_resubmit_submits_again(
    make_config: Callable[..., Config], sim: SimulatorServer, tmp_path: Any
) -> None:
    cfg = make_config([forecast("fc-a", scopeId="scope-a"), forecast("fc-b", scopeId="scope-b")])
    cfg_path = str(tmp_path / "orchestrator.toml")
    job_a, job_b = await _caught_submitting(cfg)
    await _post_forecast(sim, _sent(job_a))  # a's made; b's (say) never left
    assert await run_once(cfg, once=False) == 1
    code, _ = await asyncio.to_thread(_cli, cfg_path, "jobs", "resubmit", str(job_b.id))
    assert code == 0
    code, out = await asyncio.to_thread(_cli, cfg_path, "jobs", "resubmit", str(job_b.id))
    assert code == 2 and "only a SUBMITTING job" in out
    # Now a's submission is the only unresolved one of its module: one candidate, adopted.
    assert await run_once(cfg, once=False) == 0
    for job in await all_jobs(cfg):
        assert_result_intact(job)
        assert_own_export(sim, job)
    assert sim.sims.clari.stats["created"] == 2  # a's, and b's resubmission


async def test_a_foreign_export_of_the_module_is_not_taken_for_ours(
    make_config: Callable[..., Config], sim: SimulatorServer
) -> None:
    cfg = make_config([forecast("fc-a", scopeId="scope-a")])
    (job,) = await _caught_submitting(cfg)
    await _post_forecast(sim, _sent(job))
    await _post_forecast(sim, {"timePeriod": "2026_Q4", "scopeId": "someone-else"})
    assert await run_once(cfg, once=False) == 1
    (waiting,) = await all_jobs(cfg)
    assert waiting.state == JobState.SUBMITTING
    assert "ambiguous: 2 candidate remote jobs of FORECAST" in (waiting.error or "")


async def test_no_refusal_when_jobs_ended_while_the_daemon_was_down(
    make_config: Callable[..., Config], sim: SimulatorServer
) -> None:
    """Three jobs RUNNING at a crash end while the daemon is down; the restart's snapshot of
    /admin/limits shows their slots free already, and their DONE (seen by the first poll) must
    not free them a second time: the provider refused 3 submissions here before."""
    sim.sims.clari.config.concurrent_limit = 3
    sim.sims.clari.config.duration = 1.0
    cfg = make_config([forecast(f"f{i}", scopeId=f"s{i}") for i in range(9)])
    daemon = Daemon(cfg, once=True)
    task = await start(daemon)
    await wait_for_jobs(cfg, lambda js: sum(j.state == JobState.RUNNING for j in js) == 3)
    await stop_hard(daemon, task)
    await wait_for(lambda: not sim.sims.clari.active(time.time()), timeout=10)
    assert await run_once(cfg, once=False, timeout=60) == 0
    jobs = await all_jobs(cfg)
    assert all(j.state == JobState.SUCCEEDED for j in jobs)
    assert sim.sims.clari.stats["rejected_limits"] == 0
    assert sim.sims.clari.stats["max_active"] == 3
