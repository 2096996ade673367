"""Clari bulk ingest against the simulator over loopback HTTP (served under /clari/v2)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import Config, load_config
from orchestrator.domain import JobState, PartState
from orchestrator.engine.daemon import Daemon
from orchestrator.ledger.store import Ledger
from orchestrator.simulator.clari_ingest import ClariIngestSimulator
from orchestrator.simulator.server import SimulatorServer
from tests.conftest import API_KEY, PARTNER_KEY, write_config
from tests.integration.helpers import all_jobs, job_parts, run_once, start, stop_hard

pytestmark = pytest.mark.timeout(120)

T0 = 1_700_000_000_000


def ing(sim: SimulatorServer) -> ClariIngestSimulator:
    return sim.sims.clari_ingest


def config(tmp_path: Path, sim: SimulatorServer, pipelines: list[dict[str, Any]]) -> Config:
    provider = {"partner_key": PARTNER_KEY, "poll": {"initial": "0.05s", "max_interval": "0.2s"}}
    return load_config(write_config(tmp_path, sim.base_url("clari"), pipelines, provider=provider))


def ingest(name: str, source: str, **params: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "clari.ingest",
        "params": {"entity": "account", "source": source, **params},
    }


def record(i: int, entity: str = "health", **kw: Any) -> dict[str, Any]:
    return {
        "sourceEntity": entity,
        "id": f"001Z{i:014d}",
        "createdAt": T0,
        "updatedAt": T0 + i,
        "healthScore": i % 100,
        **kw,
    }


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


async def test_initial_load_split_into_files_with_one_last_batch(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    rows = [record(i, "health" if i % 2 else "nps") for i in range(3_000)]
    write_jsonl(tmp_path / "in" / "accounts.jsonl", rows)
    cfg = config(
        tmp_path,
        sim,
        [ingest("acct", f"{tmp_path}/in/*.jsonl", mode="initial", maxFileBytes=65_536)],
    )
    assert await run_once(cfg) == 0
    (job,) = await all_jobs(cfg)
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.result_rows == 3_000
    files = await job_parts(cfg, job.id)
    assert len(files) > 1 and all(p.state == PartState.DONE for p in files)
    assert all((p.bytes or 0) <= 65_536 for p in files)
    sims = ing(sim)
    assert sims.stats["uploads"] == len(files)
    assert sims.stats["last_batches"] == 1
    last = max(sims.jobs.values(), key=lambda j: j.created)
    assert last.last and last.mode == "initial"
    got = sorted(r["id"] for r in sims.received["account"])
    assert got == sorted(r["id"] for r in rows)


async def test_bad_records_fail_before_anything_is_sent(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    rows = [record(0), {**record(1), "updatedAt": T0 - 5}, {**record(2), "createdAt": 1_700_000}]
    src = write_jsonl(tmp_path / "in" / "bad.jsonl", rows)
    cfg = config(tmp_path, sim, [ingest("acct", str(src))])
    assert await run_once(cfg) == 1
    (job,) = await all_jobs(cfg)
    assert f"{src}:2: updatedAt is before createdAt" in (job.error or "")
    assert f"{src}:3: createdAt looks like seconds" in (job.error or "")
    assert ing(sim).stats["uploads"] == 0


async def test_validation_failure_records_clari_errors(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    ing(sim).config.reject_ids = ["001Z00000000000002"]
    src = tmp_path / "in" / "a.json"
    src.parent.mkdir()
    records = [{k: v for k, v in record(i).items() if k != "sourceEntity"} for i in range(5)]
    src.write_text(json.dumps([{"sourceEntity": "health", "records": records}]))
    cfg = config(tmp_path, sim, [ingest("acct", str(src))])
    assert await run_once(cfg) == 1
    (job,) = await all_jobs(cfg)
    assert job.state == JobState.FAILED
    assert "VALIDATION_FAILED" in (job.error or "")
    assert "INVALID_INPUT_FORMAT: Field type does not match expected type" in (job.error or "")
    (part,) = await job_parts(cfg, job.id)
    assert part.state == PartState.FAILED and "Field type" in (part.detail or "")
    assert API_KEY not in (job.error or "") and PARTNER_KEY not in (job.error or "")


async def test_concurrent_ingestion_limit_waited_out(tmp_path: Path, sim: SimulatorServer) -> None:
    ing(sim).config.max_concurrent = 1
    for n in range(3):
        write_jsonl(tmp_path / f"in{n}" / "a.jsonl", [record(n * 100 + i) for i in range(50)])
    cfg = config(tmp_path, sim, [ingest(f"acct{n}", f"{tmp_path}/in{n}/*.jsonl") for n in range(3)])
    assert await run_once(cfg, timeout=60) == 0
    jobs = await all_jobs(cfg)
    assert [j.state for j in jobs] == [JobState.SUCCEEDED] * 3
    assert ing(sim).stats["max_active"] <= 1
    assert len(ing(sim).received["account"]) == 150


async def test_ingest_leaves_export_slots_and_quota_alone(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    write_jsonl(tmp_path / "in" / "a.jsonl", [record(i) for i in range(10)])
    cfg = config(tmp_path, sim, [ingest("acct", f"{tmp_path}/in/*.jsonl")])
    assert await run_once(cfg) == 0
    ledger = Ledger(cfg.ledger.url)
    try:
        from datetime import timedelta

        from orchestrator.ledger.store import utcnow

        assert await ledger.quota_times("clari", utcnow() - timedelta(days=1)) == []
    finally:
        await ledger.close()


async def test_restart_mid_ingest_sends_at_most_the_file_in_flight_again(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    ing(sim).config.duration = 0.3
    write_jsonl(tmp_path / "in" / "a.jsonl", [record(i) for i in range(2_000)])
    cfg = config(tmp_path, sim, [ingest("acct", f"{tmp_path}/in/*.jsonl", maxFileBytes=16_384)])
    daemon = Daemon(cfg, once=True, exit_when_idle=True)
    task = await start(daemon)
    async with asyncio.timeout(30):
        while ing(sim).stats["uploads"] < 3:
            await asyncio.sleep(0.01)
    await stop_hard(daemon, task)
    (job,) = await all_jobs(cfg)
    files = len(await job_parts(cfg, job.id))
    assert job.state == JobState.RUNNING and files > 3
    assert await run_once(load_config(cfg.source), once=False, timeout=60) == 0
    (job,) = await all_jobs(cfg)
    assert job.state == JobState.SUCCEEDED, job.error
    # The files in flight (concurrentFiles, 2 by default) may go again, and no others.
    assert files <= ing(sim).stats["uploads"] <= files + 2
    assert {r["id"] for r in ing(sim).received["account"]} == {
        record(i)["id"] for i in range(2_000)
    }


async def test_an_ingestion_that_ends_failed_is_uploaded_again(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    """Clari answers the status read with HTTP 500 and status FAILED, 'Please retry
    ingestion.': that is the work failing (upload the file again), not the read."""
    ing(sim).config.fail_next = 1
    write_jsonl(tmp_path / "in" / "a.jsonl", [record(i) for i in range(20)])
    cfg = config(tmp_path, sim, [{**ingest("acct", f"{tmp_path}/in/*.jsonl"), "max_attempts": 2}])
    assert await run_once(cfg, timeout=60) == 0
    (job,) = await all_jobs(cfg)
    assert job.state == JobState.SUCCEEDED, job.error
    assert ing(sim).stats["failed_jobs"] == 1
    assert ing(sim).stats["uploads"] == 2  # the file went again after the FAILED
    assert {r["id"] for r in ing(sim).received["account"]} == {record(i)["id"] for i in range(20)}
    (part,) = await job_parts(cfg, job.id)
    assert part.state == PartState.DONE


async def test_an_upload_answered_429_is_sent_again_whole(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    """The first upload's body is read to its end and answered 429: the retry must send the
    whole file again (an aiohttp form around a file object, once sent, is empty)."""
    ing(sim).config.too_many_next = 1
    rows = [record(i) for i in range(300)]
    write_jsonl(tmp_path / "in" / "a.jsonl", rows)
    cfg = config(tmp_path, sim, [ingest("acct", f"{tmp_path}/in/*.jsonl")])
    assert await run_once(cfg, timeout=60) == 0
    (job,) = await all_jobs(cfg)
    assert job.state == JobState.SUCCEEDED, job.error
    assert ing(sim).stats["too_many"] == 1 and ing(sim).stats["uploads"] == 1
    got = ing(sim).received["account"]
    assert sorted(r["id"] for r in got) == sorted(r["id"] for r in rows)


async def test_files_go_concurrently_within_the_window_and_an_id_waits_for_its_earlier_file(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    """concurrentFiles = 3: three files in flight at once, never more; a record whose id an
    earlier file in flight holds is uploaded only once that file is done (Clari would apply
    the two in either order), so the later record is the one that stays."""
    sims = ing(sim)
    sims.config.max_concurrent = 3
    sims.config.duration = 0.3
    rows = [record(i) for i in range(1_200)]
    rows.append({**record(3), "updatedAt": T0 + 10**6, "healthScore": 999})  # id of file 1
    write_jsonl(tmp_path / "in" / "a.jsonl", rows)
    cfg = config(
        tmp_path,
        sim,
        [ingest("acct", f"{tmp_path}/in/*.jsonl", maxFileBytes=16_384, concurrentFiles=3)],
    )
    assert await run_once(cfg, timeout=60) == 0
    (job,) = await all_jobs(cfg)
    assert job.state == JobState.SUCCEEDED, job.error
    assert sims.stats["max_active"] == 3 and sims.stats["too_many"] == 0
    jobs = sorted(sims.jobs.values(), key=lambda j: j.created)
    first, last = jobs[0], jobs[-1]
    done = first.created + sims.config.queue_delay + sims.config.duration
    assert last.created >= done  # the file holding the repeated id waited for the first
    assert jobs[1].created < done  # others did not
    assert len(sims.received["account"]) == len(rows)


async def test_files_are_cut_by_the_lines_own_lengths_and_never_sent_over_the_limit(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    """Records are costed at their line's length less the sourceEntity member, without
    rendering: a compact file fills each upload to within one record of maxFileBytes; a file
    written with spaces and floats that render longer (1e5 is 100000.0) is never sent over
    it; Clari receives every record as the file holds it."""
    limit = 16_384
    compact = [record(i, amount=i * 125) for i in range(600)]  # no decimal: no slack
    write_jsonl(tmp_path / "in" / "a.jsonl", []).write_bytes(
        b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in compact)
    )
    spaced = [
        json.dumps(record(i, entity="opportunity"), indent=None)[:-1]
        + f', "big": 1e{i % 15}, "huge": 12345678901234567.{i % 10}, "amount": {i}.5}}'
        for i in range(600)
    ]
    write_jsonl(tmp_path / "in2" / "b.jsonl", []).write_text("".join(s + "\n" for s in spaced))
    cfg = config(
        tmp_path,
        sim,
        [
            ingest("compact", f"{tmp_path}/in/*.jsonl", maxFileBytes=limit),
            ingest("spaced", f"{tmp_path}/in2/*.jsonl", entity="opportunity", maxFileBytes=limit),
        ],
    )
    assert await run_once(cfg, timeout=60) == 0
    assert all(j.state == JobState.SUCCEEDED for j in await all_jobs(cfg))
    sizes = [n for _, n in ing(sim).file_sizes]
    assert len(sizes) >= 10 and max(sizes) <= limit
    one = len(json.dumps(compact[-1], separators=(",", ":")))
    got = {e: sorted(rs, key=lambda r: str(r["id"])) for e, rs in ing(sim).received.items()}
    assert got["account"] == [{k: v for k, v in r.items() if k != "sourceEntity"} for r in compact]
    assert [r["big"] for r in got["opportunity"]] == [float(f"1e{i % 15}") for i in range(600)]
    compact_files = sorted(n for entity, n in ing(sim).file_sizes if entity == "account")
    assert compact_files[1] >= limit - 2 * one  # all but the last (the smallest), full
