"""Claro dataset exports against the simulator over loopback HTTP: parts, stitching, expired
URLs, datasets still processing, dropped downloads, the per-minute limit, errors, crash resume."""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import Config, load_config
from orchestrator.domain import JobState, PartState
from orchestrator.engine.daemon import Daemon
from orchestrator.ledger.store import Ledger
from orchestrator.simulator.claro import ClaroDataset, ClaroSimulator
from orchestrator.simulator.server import SimulatorServer
from tests.conftest import API_KEY, write_config
from tests.integration.helpers import (
    all_jobs,
    assert_result_intact,
    job_parts,
    run_once,
    start,
    stop_hard,
)

pytestmark = pytest.mark.timeout(120)


def claro_config(
    tmp_path: Path,
    sim: SimulatorServer,
    pipelines: list[dict[str, Any]],
    **provider: Any,
) -> Config:
    prov = {
        "base_url": sim.base_url("claro"),
        "poll": {"initial": "0.1s", "max_interval": "0.3s"},
        **provider,
    }
    path = write_config(tmp_path, sim.base_url("clari"), pipelines, providers={"claro": prov})
    return load_config(path)


def export(name: str, **params: Any) -> dict[str, Any]:
    return {"name": name, "kind": "claro.dataset_export", "params": params}


def claro(sim: SimulatorServer) -> ClaroSimulator:
    return sim.sims.claro


def add_dataset(sim: SimulatorServer, **kw: Any) -> ClaroDataset:
    d = ClaroDataset(**kw)
    claro(sim).config.datasets.append(d)
    return d


def csv_rows(path: str) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        return header, list(reader)


async def test_large_dataset_exported_in_parts_and_stitched(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    d = add_dataset(sim, id="ds_big", name="Big", rows=250_000)
    cfg = claro_config(tmp_path, sim, [export("big", datasetId="ds_big")])
    assert await run_once(cfg, timeout=90) == 0
    (job,) = await all_jobs(cfg)
    assert_result_intact(job)
    assert job.result_rows == 250_000
    header, rows = csv_rows(str(job.result_path))
    assert header == ["product_id", "product_name", "category", "price"]
    assert rows == [d.row(i) for i in range(250_000)]  # every row, in order, once
    assert claro(sim).stats["exports"] == 3
    parts = await job_parts(cfg, job.id)
    assert [(p.first_row, p.row_count, p.state) for p in parts] == [
        (0, 100_000, PartState.DONE),
        (100_000, 100_000, PartState.DONE),
        (200_000, 50_000, PartState.DONE),
    ]
    # part files are gone once stitched; only the result is left
    assert [p.name for p in Path(str(job.result_path)).parent.iterdir()] == [
        Path(str(job.result_path)).name
    ]


async def test_json_parts_merge_into_one_array(tmp_path: Path, sim: SimulatorServer) -> None:
    d = add_dataset(sim, id="ds_j", name="J", rows=2_500)
    cfg = claro_config(
        tmp_path,
        sim,
        [export("j", datasetId="ds_j", format="json", partRows=1000, includeMetadata=True)],
    )
    assert await run_once(cfg) == 0
    (job,) = await all_jobs(cfg)
    assert_result_intact(job)
    data = json.loads(Path(str(job.result_path)).read_text())
    assert job.result_rows == len(data) == 2_500
    assert [r["product_id"] for r in data] == [d.row(i)[0] for i in range(2_500)]
    assert data[1234]["_metadata"] == {"rowId": "row_1234"}


async def test_xlsx_stays_in_parts_listed_by_a_manifest(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    add_dataset(sim, id="ds_x", name="X", rows=30)
    cfg = claro_config(tmp_path, sim, [export("x", datasetId="ds_x", format="xlsx", partRows=10)])
    assert await run_once(cfg) == 0
    (job,) = await all_jobs(cfg)
    assert_result_intact(job)
    manifest = json.loads(Path(str(job.result_path)).read_text())
    assert [Path(p["path"]).name for p in manifest["parts"]] == [
        "part-0001.xlsx",
        "part-0002.xlsx",
        "part-0003.xlsx",
    ]
    for p in manifest["parts"]:
        assert Path(p["path"]).read_bytes()[:2] == b"PK"  # a zip container


async def test_expired_download_url_is_replaced(tmp_path: Path, sim: SimulatorServer) -> None:
    d = add_dataset(sim, id="ds_e", name="E", rows=300)
    claro(sim).config.expired_urls = 2
    cfg = claro_config(tmp_path, sim, [export("e", datasetId="ds_e", partRows=100)])
    assert await run_once(cfg) == 0
    (job,) = await all_jobs(cfg)
    assert_result_intact(job)
    assert csv_rows(str(job.result_path))[1] == [d.row(i) for i in range(300)]
    stats = claro(sim).stats
    assert stats["downloads_expired"] == 2
    assert stats["exports"] == 3 + 2  # one fresh URL per expired one


async def test_processing_dataset_is_exported_once_ready(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    import time

    add_dataset(sim, id="ds_p", name="P", rows=10, ready_at=time.time() + 1.0)
    cfg = claro_config(tmp_path, sim, [export("p", datasetId="ds_p")])
    assert await run_once(cfg) == 0
    (job,) = await all_jobs(cfg)
    assert_result_intact(job)
    assert job.result_rows == 10
    assert claro(sim).stats["exports"] == 1


async def test_processing_past_the_deadline_fails_with_the_reason(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    import time

    add_dataset(sim, id="ds_slow", name="S", rows=10, ready_at=time.time() + 3600)
    pipeline = {**export("slow", datasetId="ds_slow"), "deadline": "1s"}
    cfg = claro_config(tmp_path, sim, [pipeline])
    assert await run_once(cfg) == 1
    (job,) = await all_jobs(cfg)
    assert job.state == JobState.FAILED
    assert "still processing" in (job.error or "") or "deadline" in (job.error or "")
    assert claro(sim).stats["exports"] == 0


async def test_a_failure_recorded_while_its_work_is_stopped_still_counts(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    """The worker decides FAILED and, while the ledger records it, a deadline or cancel found in
    the same moment stops that work: the write lands either way, so the count must too (it went
    missing once, and `run --once` said 0 for a failed job)."""
    add_dataset(sim, id="ds_denied", name="D", rows=5, denied=True)
    cfg = claro_config(tmp_path, sim, [export("bad", datasetId="ds_denied")])
    daemon = Daemon(cfg, once=True)
    record = daemon.ledger.transition
    stops: list[asyncio.Task[None]] = []

    async def stopped_while_recorded(job: Any, *args: Any, **kw: Any) -> Any:
        if kw.get("reason") == "failed":
            stops.append(asyncio.create_task(daemon.worker.stop(job.id)))
        return await record(job, *args, **kw)

    daemon.ledger.transition = stopped_while_recorded  # type: ignore[method-assign]
    async with asyncio.timeout(30):
        assert await daemon.run() == 1
    assert len(stops) == 1 and stops[0].done()
    (job,) = await all_jobs(cfg)
    assert job.state == JobState.FAILED
    assert "ACCESS_DENIED" in (job.error or "")
    assert daemon.ctx.stats.finished == {JobState.FAILED.value: 1}


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"datasetId": "no_such"}, "DATASET_NOT_FOUND"),
        ({"datasetId": "ds_denied"}, "ACCESS_DENIED"),
        ({"datasetId": "ds_small", "columnIds": ["col_9"]}, "COLUMN_NOT_FOUND"),
    ],
)
async def test_provider_errors_fail_at_once_with_the_message(
    tmp_path: Path, sim: SimulatorServer, params: dict[str, Any], code: str
) -> None:
    add_dataset(sim, id="ds_denied", name="D", rows=5, denied=True)
    cfg = claro_config(tmp_path, sim, [export("bad", **params)])
    assert await run_once(cfg) == 1
    (job,) = await all_jobs(cfg)
    assert job.state == JobState.FAILED
    assert code in (job.error or "")
    assert job.attempts == 1  # not retried: the provider will keep saying the same
    assert API_KEY not in (job.error or "")


async def test_dropped_downloads_never_leave_a_truncated_result(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    d = add_dataset(sim, id="ds_d", name="D", rows=3_000)
    claro(sim).config.download_drop_rate = 0.5
    claro(sim).faults.rng.seed(3)
    cfg = claro_config(tmp_path, sim, [export("d", datasetId="ds_d", partRows=500)])
    assert await run_once(cfg, timeout=60) == 0
    (job,) = await all_jobs(cfg)
    assert_result_intact(job)
    assert csv_rows(str(job.result_path))[1] == [d.row(i) for i in range(3_000)]
    assert claro(sim).faults.counts["download_dropped"] > 0


async def test_rate_limit_headers_slow_us_down_before_a_429(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    add_dataset(sim, id="ds_r", name="R", rows=1_200)
    claro(sim).config.rate_limit = 5
    claro(sim).config.rate_window = 1.0
    # our own per-minute cap is set high: the server's headers alone must keep us under its limit
    cfg = claro_config(
        tmp_path, sim, [export("r", datasetId="ds_r", partRows=100)], requests_per_minute=6000
    )
    assert await run_once(cfg, timeout=60) == 0
    (job,) = await all_jobs(cfg)
    assert_result_intact(job)
    stats = claro(sim).stats
    assert stats["exports"] == 12
    assert stats["rate_limited"] == 0
    assert stats["max_in_window"] <= 5


async def test_429_storm_completes(tmp_path: Path, sim: SimulatorServer) -> None:
    d = add_dataset(sim, id="ds_s", name="S", rows=800)
    claro(sim).faults.update({"rate_429": 0.4, "retry_after": 0.05, "seed": 5})
    cfg = claro_config(tmp_path, sim, [export("s", datasetId="ds_s", partRows=100)], retries=8)
    assert await run_once(cfg, timeout=60) == 0
    (job,) = await all_jobs(cfg)
    assert csv_rows(str(job.result_path))[1] == [d.row(i) for i in range(800)]
    assert claro(sim).faults.counts["429"] > 0


async def test_dataset_list_and_filter_fan_out(tmp_path: Path, sim: SimulatorServer) -> None:
    add_dataset(sim, id="ds_c1", name="C1", rows=3, type="extraction")
    add_dataset(sim, id="ds_c2", name="C2", rows=4, type="extraction")
    cfg = claro_config(
        tmp_path,
        sim,
        [
            export("listed", datasets=["ds_small", "ds_c1"]),
            export("filtered", filter={"type": "extraction"}),
        ],
    )
    assert await run_once(cfg) == 0
    jobs = await all_jobs(cfg)
    listed = sorted(j.params["datasetId"] for j in jobs if j.pipeline == "listed")
    assert listed == ["ds_c1", "ds_small"]
    filtered = [j for j in jobs if j.pipeline == "filtered"]
    parent = [j for j in filtered if "filter" in j.params]
    children = sorted(j.params["datasetId"] for j in filtered if "filter" not in j.params)
    assert len(parent) == 1 and parent[0].state == JobState.SUCCEEDED
    assert parent[0].result_path is None
    assert children == ["ds_c1", "ds_c2"]
    for j in jobs:
        if j.result_path:
            assert_result_intact(j)


async def test_restart_resumes_at_the_missing_part(tmp_path: Path, sim: SimulatorServer) -> None:
    d = add_dataset(sim, id="ds_k", name="K", rows=2_000)
    claro(sim).faults.latency = 0.15
    cfg = claro_config(tmp_path, sim, [export("k", datasetId="ds_k", partRows=250)])
    daemon = Daemon(cfg, once=True, exit_when_idle=True)
    task = await start(daemon)
    ledger = Ledger(cfg.ledger.url)
    try:
        async with asyncio.timeout(30):
            while True:
                jobs = await ledger.list_jobs()
                parts = await ledger.parts(jobs[0].id) if jobs else []
                if sum(p.state == PartState.DONE for p in parts) >= 3:
                    break
                await asyncio.sleep(0.02)
    finally:
        await ledger.close()
    await stop_hard(daemon, task)
    exported_before = claro(sim).stats["exports"]
    (job,) = await all_jobs(cfg)
    assert job.state == JobState.RUNNING
    claro(sim).faults.latency = 0.0
    assert await run_once(load_config(cfg.source), once=False) == 0
    (job,) = await all_jobs(cfg)
    assert_result_intact(job)
    assert csv_rows(str(job.result_path))[1] == [d.row(i) for i in range(2_000)]
    # 8 parts: each exported once, except the one a stop may have caught in the air
    assert 8 <= claro(sim).stats["exports"] <= 9
    assert claro(sim).stats["exports"] - exported_before <= 8 - 3 + 1


async def test_skip_and_row_count_select_a_window(tmp_path: Path, sim: SimulatorServer) -> None:
    d = add_dataset(sim, id="ds_w", name="W", rows=1_000)
    cfg = claro_config(
        tmp_path, sim, [export("w", datasetId="ds_w", skip=150, rowCount=420, partRows=100)]
    )
    assert await run_once(cfg) == 0
    (job,) = await all_jobs(cfg)
    assert_result_intact(job)
    assert csv_rows(str(job.result_path))[1] == [d.row(i) for i in range(150, 570)]
    assert claro(sim).stats["exports"] == 5
