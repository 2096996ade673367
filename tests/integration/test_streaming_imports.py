"""Imports read streaming (issue 17), against the simulators over loopback HTTP: every problem
of a file reported before anything is sent, a restart that does not read again what was sent,
Claravine's POSTs and status polls pipelined up to the account's request rate, and the
progress counts on the job."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.config import Config, load_config
from orchestrator.domain import JobState, PartState
from orchestrator.engine.daemon import Daemon
from orchestrator.ledger.store import Ledger
from orchestrator.simulator.server import SimulatorServer
from tests.conftest import API_SECRET, write_config
from tests.integration.helpers import all_jobs, job_parts, run_once, start, stop_hard
from tests.integration.test_claravine import config, cv, row, submission, write_csv
from tests.integration.test_clayva import cl, event, events_import, write_jsonl

pytestmark = pytest.mark.timeout(120)


async def progress_of(cfg: Config, job_id: int) -> Any:
    ledger = Ledger(cfg.ledger.url)
    try:
        return (await ledger.import_progress([job_id]))[job_id]
    finally:
        await ledger.close()


async def test_every_broken_row_is_reported_and_nothing_is_sent(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    rows = [row(i) for i in range(3_000)]
    for i in (10, 1_500, 2_999):
        rows[i] = rows[i][:4]  # two values short
    src = write_csv(tmp_path / "inbox" / "broken.csv", rows)
    cfg = config(tmp_path, sim, [submission("t", str(src))])
    assert await run_once(cfg, timeout=60) == 1
    (job,) = await all_jobs(cfg)
    assert job.state == JobState.FAILED
    error = job.error or ""
    assert "3 problems, nothing sent" in error
    for line in (12, 1_502, 3_001):
        assert f"{src}:{line}: 4 values, the header has 6" in error
    assert cv(sim).stats["posts"] == 0


async def interrupted_import(
    tmp_path: Path, sim: SimulatorServer, *, posts: int
) -> tuple[Path, Config]:
    """A 20,000-row Claravine import stopped like a crash once `posts` chunks were posted."""
    cv(sim).faults.latency = 0.05
    src = write_csv(tmp_path / "inbox" / "d.csv", [row(i) for i in range(20_000)])
    cfg = config(tmp_path, sim, [submission("t", str(src))])
    daemon = Daemon(cfg, once=True, exit_when_idle=True)
    task = await start(daemon)
    async with asyncio.timeout(30):
        while cv(sim).stats["posts"] < posts:
            await asyncio.sleep(0.01)
    await stop_hard(daemon, task)
    return src, cfg


async def test_a_restart_resumes_without_reading_what_was_sent(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    src, cfg = await interrupted_import(tmp_path, sim, posts=6)
    (job,) = await all_jobs(cfg)
    sent = [p for p in await job_parts(cfg, job.id) if p.state != PartState.PENDING]
    assert 0 < len(sent) < 20
    # Overwrite what was sent and acknowledged (same size, same mtime): only a reader of the
    # sent chunks (or of the whole file, to hash or validate it again) could notice. A chunk
    # still SENDING at the stop may need sending again, so its bytes are left alone.
    acked = [p for p in sent if p.state in (PartState.RUNNING, PartState.DONE)]
    assert acked, [p.state for p in sent]
    stat = src.stat()
    with src.open("r+b") as f:
        f.seek(acked[0].byte_start or 0)
        f.write(b"X" * 100)
    os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    cv(sim).faults.latency = 0.0
    assert await run_once(load_config(cfg.source), once=False, timeout=60) == 0
    (job,) = await all_jobs(cfg)
    assert job.state == JobState.SUCCEEDED, job.error
    names = cv(sim).names_posted
    assert len(names) == len(set(names)) == 20
    assert cv(sim).stats["rows_received"] == 20_000


async def test_a_file_changed_before_a_restart_is_refused(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    src, cfg = await interrupted_import(tmp_path, sim, posts=3)
    with src.open("a") as f:
        f.write("Campaign late,S1,Adults,Brand,Marketing,2026-11\n")
    cv(sim).faults.latency = 0.0
    assert await run_once(load_config(cfg.source), once=False, timeout=60) == 1
    job = (await all_jobs(cfg))[0]
    assert job.state == JobState.FAILED
    assert "changed since this job was queued" in (job.error or "")


async def test_posts_and_polls_run_at_the_accounts_request_rate(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    """Each answer takes 100 ms: one request at a time would make 10 a second. Pipelined, the
    import runs at the configured 20 a second (the strict limiter keeps 10% in hand)."""
    cv(sim).faults.latency = 0.1
    cv(sim).config.processing_time = 0.3
    # Chunks of 100 rows: the daemon's own CPU per request stays small beside the 50 ms a
    # request may take at 20/s, even on a loaded machine (the pipelining is what is tested).
    src = write_csv(tmp_path / "inbox" / "r.csv", [row(i) for i in range(4_000)])
    prov = {
        "base_url": sim.base_url("claravine"),
        "api_secret": API_SECRET,
        "requests_per_second": 20,
        "poll": {"initial": "0.3s", "max_interval": "1s"},
    }
    cfg = load_config(
        write_config(
            tmp_path,
            sim.base_url("clari"),
            [submission("t", str(src), rowsPerPost=100)],
            providers={"claravine": prov},
        )
    )
    s = cv(sim).stats

    def requests() -> int:
        return int(s["posts"] + s["status_requests"] + s["list_requests"])

    samples: list[tuple[float, int, int]] = []  # (when, requests so far, POSTs so far)
    daemon = Daemon(cfg, once=True, exit_when_idle=True)
    task = await start(daemon)
    async with asyncio.timeout(90):
        while not task.done():
            samples.append((time.monotonic(), requests(), int(s["posts"])))
            await asyncio.sleep(0.05)
    assert task.result() == 0
    (job,) = await all_jobs(cfg)
    assert job.state == JobState.SUCCEEDED, job.error
    assert s["posts"] == 40
    # The steady part, from the 5th POST to the 35th (start-up and the last polls left out).
    t0, r0, _ = next(x for x in samples if x[2] >= 5)
    t1, r1, _ = next(x for x in samples if x[2] >= 35)
    # One at a time would be 10/s (50%); pipelined it passed 85% on a quiet machine, and once
    # 79.9% in CI (23 requests in 1.44 s: a window this short, sampled every 50 ms, moves by a
    # few percent). 70% tells pipelined from serial with room for that; bench 8 measures the
    # 85% of the issue, over a whole run.
    assert (r1 - r0) / (t1 - t0) >= 0.70 * 20, (r1 - r0, t1 - t0)
    progress = await progress_of(cfg, job.id)
    assert (progress.phase, progress.rows_validated) == ("done", 4_000)
    assert (progress.rows_sent, progress.rows_confirmed, progress.rows_rejected) == (
        4_000,
        4_000,
        0,
    )


async def test_skipped_rejects_are_counted_and_listed_on_the_job(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    events: list[Any] = [event(i) for i in range(300)]
    for i in range(0, 300, 2):
        events[i] = {"event": "X"}  # no userId or anonymousId
    src = write_jsonl(tmp_path / "in" / "mixed.jsonl", events)
    provider = {"base_url": sim.base_url("clayva"), "requests_per_minute": 6000}
    path = write_config(
        tmp_path,
        sim.base_url("clari"),
        [events_import("ev", str(src), on_invalid="skip")],
        providers={"clayva": provider},
    )
    cfg = load_config(path)
    assert await run_once(cfg) == 0
    (job,) = await all_jobs(cfg)
    assert job.state == JobState.SUCCEEDED and job.result_rows == 150
    progress = await progress_of(cfg, job.id)
    assert progress.rows_rejected == 150 and progress.rows_confirmed == 150
    assert len(progress.rejects) == 100
    assert progress.rejects[0] == f"{src}:1: userId or anonymousId is required"
    side = Path(str(progress.rejects_path))
    assert len(side.read_text().splitlines()) == 150

    def run_cli(*args: str) -> Any:  # the CLI runs its own event loop: not on this one
        return CliRunner().invoke(cli, [*args, "--config", str(path)])

    shown = await asyncio.to_thread(run_cli, "jobs", "show", str(job.id))
    assert shown.exit_code == 0, shown.output
    assert f"rejects: first 100 of 150 (all in {side})" in shown.output
    assert f"{src}:199: userId or anonymousId is required" in shown.output
    listed = await asyncio.to_thread(run_cli, "jobs", "list", "--json")
    (got,) = json.loads(listed.output)
    assert got["import"]["rows_rejected"] == 150
    assert got["import"]["rows_validated"] == 150


async def test_batches_already_delivered_are_skipped_when_the_file_comes_back(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    src = write_jsonl(tmp_path / "in" / "ev.jsonl", [event(i) for i in range(2_500)])
    provider = {"base_url": sim.base_url("clayva"), "requests_per_minute": 6000}
    path = write_config(
        tmp_path,
        sim.base_url("clari"),
        [events_import("ev", str(src))],
        providers={"clayva": provider},
    )
    assert await run_once(load_config(path)) == 0
    with src.open("a") as f:  # the file comes back with one more event: a new file
        f.write(json.dumps(event(2_500)) + "\n")
    assert await run_once(load_config(path)) == 0
    _, second = await all_jobs(load_config(path))
    assert second.state == JobState.SUCCEEDED, second.error
    states = [p.state for p in await job_parts(load_config(path), second.id)]
    assert states == [PartState.SKIPPED, PartState.SKIPPED, PartState.DONE]
    assert cl(sim).stats["events"] == 2_500 + 501  # the last batch again, with the new event
