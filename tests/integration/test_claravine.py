"""Claravine submissions and transaction exports against the simulator over loopback HTTP."""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orchestrator.config import Config, load_config
from orchestrator.domain import JobState, PartState
from orchestrator.engine.daemon import Daemon
from orchestrator.ledger import migrate
from orchestrator.scheduler import trigger
from orchestrator.simulator.claravine import CAMPAIGN_FIELDS, ClaravineSimulator
from orchestrator.simulator.server import SimulatorServer
from tests.conftest import API_KEY, API_SECRET, write_config
from tests.integration.helpers import all_jobs, job_parts, run_once, start, stop_hard

pytestmark = pytest.mark.timeout(120)

DATASET = "4f1c2a9e-0000-4000-8000-000000000001"


def cv(sim: SimulatorServer) -> ClaravineSimulator:
    return sim.sims.claravine


def config(tmp_path: Path, sim: SimulatorServer, pipelines: list[dict[str, Any]]) -> Config:
    prov = {
        "base_url": sim.base_url("claravine"),
        "api_secret": API_SECRET,
        "poll": {"initial": "0.05s", "max_interval": "0.2s"},
    }
    path = write_config(tmp_path, sim.base_url("clari"), pipelines, providers={"claravine": prov})
    return load_config(path)


def submission(name: str, source: str, **params: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "claravine.submission",
        "params": {"dataset": DATASET, "source": source, **params},
    }


def row(i: int, owner: str = "Marketing") -> list[str]:
    return [f"Campaign {i}", f"S{i % 97}", "Adults", "Brand", owner, "2026-11"]


def write_csv(path: Path, rows: list[list[str]], header: list[str] = CAMPAIGN_FIELDS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


async def test_25000_rows_go_as_25_chunks_all_complete(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    write_csv(tmp_path / "inbox" / "big.csv", [row(i) for i in range(25_000)])
    cfg = config(tmp_path, sim, [submission("taxonomy", f"{tmp_path}/inbox/*.csv")])
    assert await run_once(cfg, timeout=60) == 0
    (job,) = await all_jobs(cfg)
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.result_rows == 25_000
    parts = await job_parts(cfg, job.id)
    assert len(parts) == 25
    assert all(p.state == PartState.DONE and p.remote_id for p in parts)
    assert len({p.name for p in parts}) == 25  # a unique transactionName per chunk
    s = cv(sim)
    assert s.stats["posts"] == 25 and s.stats["rows_received"] == 25_000
    assert s.stats["rejected"] == 0
    sent = sorted((tx.rows[0][0] for tx in s.transactions.values()), key=lambda x: int(x[9:]))
    assert sent == [f"Campaign {i * 1000}" for i in range(25)]


async def test_failed_chunks_reported_then_only_they_are_resent(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    rows = [row(i, owner="" if i in (1500, 7200) else "Marketing") for i in range(10_000)]
    src = write_csv(tmp_path / "inbox" / "campaigns.csv", rows)
    cfg = config(tmp_path, sim, [submission("taxonomy", str(src))])
    assert await run_once(cfg, timeout=60) == 1
    (job,) = await all_jobs(cfg)
    assert job.state == JobState.FAILED
    error = job.error or ""
    assert "2 of 10 chunks Failed" in error
    # data row 1500 (0-based) sits in chunk 2: rows 1001-2000, file lines 1002-2001
    assert f"{src}: lines 1002-2001 (rows 1001-2000)" in error
    assert f"{src}: lines 7002-8001 (rows 7001-8000)" in error
    assert "line 1502: Budget Owner: required field is empty" in error
    assert cv(sim).stats["posts"] == 10

    # the user fixes the two rows in place; the next run sends only those two chunks
    rows[1500] = row(1500)
    rows[7200] = row(7200)
    write_csv(src, rows)
    assert await run_once(load_config(cfg.source), timeout=60) == 0
    jobs = await all_jobs(cfg)
    assert len(jobs) == 2 and jobs[1].state == JobState.SUCCEEDED, jobs[1].error
    assert cv(sim).stats["posts"] == 12
    states = [p.state for p in await job_parts(cfg, jobs[1].id)]
    assert states.count(PartState.SKIPPED) == 8 and states.count(PartState.DONE) == 2


async def test_a_file_is_imported_once(tmp_path: Path, sim: SimulatorServer) -> None:
    write_csv(tmp_path / "inbox" / "a.csv", [row(i) for i in range(10)])
    cfg = config(tmp_path, sim, [submission("t", f"{tmp_path}/inbox/*.csv")])
    assert await run_once(cfg) == 0
    assert await run_once(load_config(cfg.source)) == 0
    assert len(await all_jobs(cfg)) == 1
    write_csv(tmp_path / "inbox" / "b.csv", [row(i) for i in range(10, 15)])
    assert await run_once(load_config(cfg.source)) == 0
    jobs = await all_jobs(cfg)
    assert [Path(str(j.params["file"])).name for j in jobs] == ["a.csv", "b.csv"]
    assert cv(sim).stats["posts"] == 2


async def test_lost_answers_are_found_by_name_never_sent_twice(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    cv(sim).config.lost_submit_rate = 0.5
    cv(sim).faults.rng.seed(11)
    write_csv(tmp_path / "inbox" / "c.csv", [row(i) for i in range(6_000)])
    cfg = config(tmp_path, sim, [submission("t", f"{tmp_path}/inbox/*.csv")])
    assert await run_once(cfg, timeout=60) == 0
    (job,) = await all_jobs(cfg)
    assert job.state == JobState.SUCCEEDED, job.error
    names = cv(sim).names_posted
    assert cv(sim).faults.counts["lost_submit"] > 0
    assert len(names) == len(set(names)) == 6


async def test_restart_mid_import_sends_no_chunk_twice(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    cv(sim).config.processing_time = 1.0
    cv(sim).faults.latency = 0.05
    write_csv(tmp_path / "inbox" / "d.csv", [row(i) for i in range(12_000)])
    cfg = config(tmp_path, sim, [submission("t", f"{tmp_path}/inbox/*.csv")])
    daemon = Daemon(cfg, once=True, exit_when_idle=True)
    task = await start(daemon)
    async with asyncio.timeout(30):
        while cv(sim).stats["posts"] < 4:
            await asyncio.sleep(0.01)
    await stop_hard(daemon, task)
    (job,) = await all_jobs(cfg)
    assert job.state == JobState.RUNNING
    cv(sim).faults.latency = 0.0
    assert await run_once(load_config(cfg.source), once=False, timeout=60) == 0
    (job,) = await all_jobs(cfg)
    assert job.state == JobState.SUCCEEDED, job.error
    names = cv(sim).names_posted
    assert len(names) == len(set(names)) == 12


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", b"", ":1: no header row"),
        ("ragged.csv", b"Campaign Name,Budget Owner\na,b\nc\n", ":3: 1 values, the header has 2"),
        ("latin1.csv", "Campaign Name\ncaf\xe9\n".encode("latin-1"), ":2: not UTF-8"),
        ("unknown.csv", b"Campaign Name,Colour\na,b\n", ":1: column 2 is not a field"),
        ("dupe.csv", b"Campaign Name,Campaign Name\na,b\n", ":1: header has repeated column"),
        ("bad.jsonl", b'{"Campaign Name": "a"}\n{"Campaign Name": \n', ":2: not JSON"),
        ("keys.jsonl", b'{"Campaign Name": "a"}\n{"Site ID": "b"}\n', ":2: keys differ"),
    ],
)
async def test_bad_input_fails_before_anything_is_sent(
    tmp_path: Path, sim: SimulatorServer, name: str, content: bytes, message: str
) -> None:
    src = tmp_path / "inbox" / name
    src.parent.mkdir(parents=True)
    src.write_bytes(content)
    cfg = config(tmp_path, sim, [submission("t", str(src))])
    assert await run_once(cfg) == 1
    (job,) = await all_jobs(cfg)
    assert job.state == JobState.FAILED
    assert f"{src}{message}" in (job.error or ""), job.error
    assert job.attempts == 1
    assert cv(sim).stats["posts"] == 0


async def test_jsonl_source_is_imported(tmp_path: Path, sim: SimulatorServer) -> None:
    src = tmp_path / "inbox" / "events.jsonl"
    src.parent.mkdir(parents=True)
    src.write_text(
        "".join(
            json.dumps(dict(zip(CAMPAIGN_FIELDS, row(i), strict=True))) + "\n" for i in range(5)
        )
    )
    cfg = config(tmp_path, sim, [submission("t", str(src))])
    assert await run_once(cfg) == 0
    (tx,) = cv(sim).transactions.values()
    assert tx.fields == CAMPAIGN_FIELDS and tx.rows == [row(i) for i in range(5)]


async def test_transactions_export_writes_every_row_of_the_window(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    headers = {"X-API-Key": API_KEY, "X-API-Secret": API_SECRET}
    url = f"{sim.base_url('claravine')}/{DATASET}/data"
    sent: list[list[str]] = []
    async with aiohttp.ClientSession(headers=headers) as http:
        for n in range(3):
            rows = [row(n * 10 + i) for i in range(n + 2)]
            sent += rows
            body = {"transactionName": f"manual {n}", "fields": CAMPAIGN_FIELDS, "rows": rows}
            async with http.post(url, json=body) as resp:
                assert resp.status == 201
        # one Failed submission: it has no data and is left out
        bad = {"transactionName": "bad", "fields": CAMPAIGN_FIELDS, "rows": [row(99, owner="")]}
        async with http.post(url, json=bad) as resp:
            assert resp.status == 201
    await asyncio.sleep(0.3)  # Pending → Complete
    pipeline = {
        "name": "cv-export",
        "kind": "claravine.transactions_export",
        "params": {"dataset": DATASET, "start-date": "{{ day-1 }}", "end-date": "{{ day+1 }}"},
    }
    cfg = config(tmp_path, sim, [pipeline])
    assert await run_once(cfg) == 0
    (job,) = await all_jobs(cfg)
    assert job.state == JobState.SUCCEEDED, job.error
    with open(str(job.result_path), newline="") as f:
        got = list(csv.reader(f))
    assert got[0] == CAMPAIGN_FIELDS
    assert sorted(got[1:]) == sorted(sent)
    assert job.result_rows == len(sent) == 2 + 3 + 4


async def test_import_the_newest_result_of_another_pipeline(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    from orchestrator.simulator.claravine import Template

    cv(sim).config.templates.append(
        Template(
            uuid="products-tpl",
            name="Products",
            fields=["product_id", "product_name", "category", "price"],
        )
    )
    prov = {
        "base_url": sim.base_url("claravine"),
        "api_secret": API_SECRET,
        "poll": {"initial": "0.05s", "max_interval": "0.2s"},
    }
    pipelines = [
        {
            "name": "products",
            "kind": "claro.dataset_export",
            "params": {"datasetId": "ds_products"},
        },
        {
            "name": "products-in",
            "kind": "claravine.submission",
            "params": {"dataset": "products-tpl", "source": {"pipeline": "products"}},
        },
    ]
    path = write_config(
        tmp_path,
        sim.base_url("clari"),
        pipelines,
        providers={"claravine": prov, "claro": {"base_url": sim.base_url("claro")}},
    )
    cfg = load_config(path)
    assert await run_once(cfg) == 0  # the export runs; the import finds nothing yet
    assert [j.pipeline for j in await all_jobs(cfg)] == ["products"]
    assert await run_once(load_config(path)) == 0  # now the import picks up the export's file
    jobs = await all_jobs(cfg)
    imported = [j for j in jobs if j.pipeline == "products-in"]
    assert len(imported) == 1 and imported[0].state == JobState.SUCCEEDED, imported[0].error
    assert imported[0].params["file"] == jobs[0].result_path
    assert cv(sim).stats["rows_received"] == 1_200


async def test_429_storm_and_5xx_complete_without_duplicates(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    cv(sim).faults.update({"rate_429": 0.3, "rate_5xx": 0.1, "retry_after": 0.05, "seed": 4})
    write_csv(tmp_path / "inbox" / "s.csv", [row(i) for i in range(8_000)])
    cfg = config(tmp_path, sim, [submission("t", f"{tmp_path}/inbox/*.csv")])
    assert await run_once(cfg, timeout=90) == 0
    (job,) = await all_jobs(cfg)
    assert job.state == JobState.SUCCEEDED, job.error
    names = cv(sim).names_posted
    assert len(names) == len(set(names)) == 8
    assert cv(sim).faults.counts["429"] > 0


async def test_status_page_shows_import_progress(tmp_path: Path, sim: SimulatorServer) -> None:
    cv(sim).config.processing_time = 30.0  # chunks stay Pending while we look
    write_csv(tmp_path / "inbox" / "p.csv", [row(i) for i in range(3_000)])
    cfg = config(tmp_path, sim, [submission("t", f"{tmp_path}/inbox/*.csv")])
    daemon = Daemon(cfg)  # a serving daemon (the status server is off for --once runs)
    await migrate.upgrade(daemon.ledger)
    await trigger(daemon.ledger, cfg.pipelines[0])
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.ready.wait(), 15)
        async with asyncio.timeout(20):
            while cv(sim).stats["posts"] < 3:
                await asyncio.sleep(0.02)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{daemon.web.port}/") as r:
                html = await r.text()
        assert "parts 0/3 · 3,000 validated · " in html
        assert " · 0 confirmed · 0 rejected" in html
    finally:
        await stop_hard(daemon, task)
