"""Clayva event imports against the simulator over loopback HTTP."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import Config, load_config
from orchestrator.domain import JobState, PartState
from orchestrator.engine.daemon import Daemon
from orchestrator.errors import ConfigError
from orchestrator.ledger.store import Ledger
from orchestrator.simulator.clayva import ClayvaSimulator
from orchestrator.simulator.server import SimulatorServer
from tests.conftest import write_config
from tests.integration.helpers import all_jobs, run_once, start, stop_hard

pytestmark = pytest.mark.timeout(120)


def cl(sim: SimulatorServer) -> ClayvaSimulator:
    return sim.sims.clayva


def config(
    tmp_path: Path, sim: SimulatorServer, pipelines: list[dict[str, Any]], **prov: Any
) -> Config:
    provider = {"base_url": sim.base_url("clayva"), "requests_per_minute": 6000, **prov}
    path = write_config(tmp_path, sim.base_url("clari"), pipelines, providers={"clayva": provider})
    return load_config(path)


def events_import(name: str, source: str, **params: Any) -> dict[str, Any]:
    return {"name": name, "kind": "clayva.events_import", "params": {"source": source, **params}}


def event(i: int) -> dict[str, Any]:
    return {
        "event": "Product Viewed",
        "userId": f"user_{i % 50}",
        "timestamp": f"2026-11-21T10:{i // 60 % 60:02d}:{i % 60:02d}Z",
        "properties": {"productId": f"SKU-{i}", "price": 29.99},
    }


def write_jsonl(path: Path, events: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


async def test_events_go_in_batches_of_at_most_1000(tmp_path: Path, sim: SimulatorServer) -> None:
    write_jsonl(tmp_path / "in" / "a.jsonl", [event(i) for i in range(2_500)])
    cfg = config(tmp_path, sim, [events_import("ev", f"{tmp_path}/in/*.jsonl")])
    assert await run_once(cfg) == 0
    (job,) = await all_jobs(cfg)
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.result_rows == 2_500
    stats = cl(sim).stats
    assert stats["batches"] == 3 and stats["events"] == 2_500
    assert [e["properties"]["productId"] for e in cl(sim).state.events] == [
        f"SKU-{i}" for i in range(2_500)
    ]


async def test_csv_events_with_json_properties(tmp_path: Path, sim: SimulatorServer) -> None:
    src = tmp_path / "in" / "e.csv"
    src.parent.mkdir()
    src.write_text(
        "event,userId,anonymousId,timestamp,properties\n"
        'Signed Up,u1,,2026-11-21T10:00:00Z,"{""plan"": ""pro""}"\n'
        "Page Viewed,,anon-7,,\n"
    )
    cfg = config(tmp_path, sim, [events_import("ev", str(src))])
    assert await run_once(cfg) == 0
    got = cl(sim).state.events
    assert got[0]["properties"] == {"plan": "pro"} and got[0]["userId"] == "u1"
    assert got[1]["anonymousId"] == "anon-7" and "userId" not in got[1]


async def test_invalid_events_are_reported_and_nothing_is_sent(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    bad = [event(0), {**event(1), "event": ""}, {"event": "X"}, {**event(3), "timestamp": "noon"}]
    src = write_jsonl(tmp_path / "in" / "bad.jsonl", bad)
    with src.open("a") as f:
        f.write("{not json\n")
    cfg = config(tmp_path, sim, [events_import("ev", str(src))])
    assert await run_once(cfg) == 1
    (job,) = await all_jobs(cfg)
    error = job.error or ""
    assert "4 invalid events, nothing sent" in error
    assert f"{src}:2: event name is empty" in error
    assert f"{src}:3: userId or anonymousId is required" in error
    assert f"{src}:4: timestamp is not ISO 8601" in error and "noon" not in error
    assert f"{src}:5: not JSON" in error
    assert cl(sim).stats["events"] == 0


async def test_skip_sends_the_valid_events_and_keeps_the_rejects(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    src = write_jsonl(tmp_path / "in" / "mixed.jsonl", [event(0), {"event": "X"}, event(2)])
    cfg = config(tmp_path, sim, [events_import("ev", str(src), on_invalid="skip")])
    assert await run_once(cfg) == 0
    (job,) = await all_jobs(cfg)
    assert job.state == JobState.SUCCEEDED and job.result_rows == 2
    assert cl(sim).stats["events"] == 2
    (rejects,) = (tmp_path / "results" / "ev").glob("*.rejects.txt")
    assert rejects.read_text() == f"{src}:2: userId or anonymousId is required\n"


async def test_batch_limit_respected_under_a_backlog(tmp_path: Path, sim: SimulatorServer) -> None:
    cl(sim).config.batch_limit = 2
    cl(sim).config.window = 1.0
    write_jsonl(tmp_path / "in" / "a.jsonl", [event(i) for i in range(600)])
    cfg = config(tmp_path, sim, [events_import("ev", f"{tmp_path}/in/*.jsonl", batchSize=100)])
    assert await run_once(cfg, timeout=60) == 0
    stats = cl(sim).stats
    assert stats["batches"] == 6 and stats["events"] == 600
    assert stats["rate_limited"] == 0  # X-RateLimit-Remaining: 0 held us back before a 429
    assert stats["max_batches_in_window"] <= 2


def test_plain_http_refused_except_loopback(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        "http://127.0.0.1:1/clari/v4",
        [],
        providers={"clayva": {"base_url": "http://api.clayva.example/v1"}},
    )
    with pytest.raises(ConfigError, match="base_url: plain http:// is allowed only for a loop"):
        load_config(path)


async def test_restart_resends_at_most_the_batch_in_flight(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    cl(sim).faults.latency = 0.1
    write_jsonl(tmp_path / "in" / "a.jsonl", [event(i) for i in range(3_000)])
    cfg = config(tmp_path, sim, [events_import("ev", f"{tmp_path}/in/*.jsonl", batchSize=200)])
    daemon = Daemon(cfg, once=True, exit_when_idle=True)
    task = await start(daemon)
    async with asyncio.timeout(30):
        while cl(sim).stats["batches"] < 4:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # likely mid-request
    await stop_hard(daemon, task)
    cl(sim).faults.latency = 0.0
    assert await run_once(load_config(cfg.source), once=False, timeout=60) == 0
    (job,) = await all_jobs(cfg)
    assert job.state == JobState.SUCCEEDED, job.error
    keys = cl(sim).state.keys
    assert len(keys) == 3_000  # none lost
    dupes = sum(n - 1 for n in keys.values())
    assert dupes in (0, 200)  # at most the one batch that was in flight
    ledger = Ledger(cfg.ledger.url)
    try:
        assert {p.state for p in await ledger.parts(job.id)} == {PartState.DONE}
    finally:
        await ledger.close()
