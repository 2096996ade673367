"""Imports as a user runs them: a Claravine import killed with -9 mid-way, then resumed."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import pytest

from orchestrator.simulator.claravine import CAMPAIGN_FIELDS
from tests.acceptance.helpers import cli, http_json, jobs_json, start_daemon, wait_until
from tests.conftest import API_KEY, API_SECRET, write_config

pytestmark = pytest.mark.slow
DATASET = "4f1c2a9e-0000-4000-8000-000000000001"


def test_kill_9_mid_import_sends_no_chunk_twice_and_loses_none(
    tmp_path: Path, simulator: str
) -> None:
    claravine = simulator.replace("/clari/v4", "/claravine/v1")
    http_json(claravine + "/_sim/config", {"processing_time": 0.5, "latency": 0.03})
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    with (inbox / "campaigns.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CAMPAIGN_FIELDS)
        w.writerows([f"C{i}", "S1", "Adults", "Brand", "Ops", "2026-11"] for i in range(20_000))
    config = write_config(
        tmp_path,
        simulator,
        [
            {
                "name": "taxonomy",
                "kind": "claravine.submission",
                "params": {"dataset": DATASET, "source": f"{inbox}/*.csv"},
            }
        ],
        providers={
            "claravine": {
                "base_url": claravine,
                "api_secret": API_SECRET,
                "poll": {"initial": "0.1s", "max_interval": "0.3s"},
            }
        },
    )
    daemon = start_daemon(config, "--once")
    wait_until(lambda: int(http_json(claravine + "/_sim/stats")["posts"]) >= 5, daemon)
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.wait(10)
    assert int(http_json(claravine + "/_sim/stats")["posts"]) < 20, "killed too late"
    (left,) = jobs_json(config)
    assert left["state"] == "RUNNING"
    assert left["parts"]["total"] == 20 and left["parts"]["done"] < 20  # type: ignore[index]
    listing = cli("jobs", "list", "--config", str(config)).stdout
    assert "parts " in listing and "/20" in listing

    resumed = cli("run", "--exit-when-idle", "--config", str(config))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    (job,) = jobs_json(config)
    assert job["state"] == "SUCCEEDED"
    assert job["result_rows"] == 20_000
    stats = http_json(claravine + "/_sim/stats")
    assert stats["posts"] == 20  # type: ignore[index]
    assert stats["rows_received"] == 20_000  # type: ignore[index]
    assert stats["duplicate_names"] == 0  # type: ignore[index]

    shown = json.loads(
        cli("jobs", "show", str(job["id"]), "--json", "--config", str(config)).stdout
    )
    assert [p["state"] for p in shown["parts"]] == ["DONE"] * 20
    text = cli("jobs", "show", str(job["id"]), "--config", str(config)).stdout
    assert "rows 19001-20000" in text
    for part in shown["parts"]:  # each chunk's Claravine transaction uuid
        assert part["remote_id"] and f"transaction {part['remote_id']}" in text
    assert API_KEY not in resumed.stderr + text and API_SECRET not in resumed.stderr + text


def test_trigger_queues_one_job_per_new_file(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name in ("a.csv", "b.csv"):
        (inbox / name).write_text("Campaign Name\n" + name + "\n")
    config = write_config(
        tmp_path,
        "http://127.0.0.1:9/clari/v4",
        [
            {
                "name": "taxonomy",
                "kind": "claravine.submission",
                "params": {"dataset": DATASET, "source": f"{inbox}/*.csv"},
            }
        ],
        providers={"claravine": {"base_url": "http://127.0.0.1:9/v1", "api_secret": API_SECRET}},
    )
    first = json.loads(cli("trigger", "taxonomy", "--json", "--config", str(config)).stdout)
    assert len(first["ids"]) == 2 and first["id"] == first["ids"][0]
    again = cli("trigger", "taxonomy", "--config", str(config))
    assert again.returncode == 0 and "nothing new for taxonomy" in again.stdout
    (inbox / "c.csv").write_text("Campaign Name\nc\n")
    third = cli("trigger", "taxonomy", "--config", str(config))
    assert third.stdout.startswith("job 3 enqueued for taxonomy"), third.stdout


def test_kill_9_mid_claro_export_resumes_at_the_missing_part(
    tmp_path: Path, simulator: str
) -> None:
    from orchestrator.simulator.claro import ClaroDataset

    claro = simulator.replace("/clari/v4", "/claro/api/v2")
    http_json(claro + "/_sim/datasets", [{"id": "ds_kill", "name": "K", "rows": 20_000}])  # type: ignore[arg-type]
    http_json(claro + "/_sim/config", {"latency": 0.15})
    config = write_config(
        tmp_path,
        simulator,
        [
            {
                "name": "products",
                "kind": "claro.dataset_export",
                "params": {"datasetId": "ds_kill", "partRows": 2_000},
            }
        ],
        providers={"claro": {"base_url": claro}},
    )
    daemon = start_daemon(config, "--once")
    wait_until(lambda: int(http_json(claro + "/_sim/stats")["exports"]) >= 3, daemon)
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.wait(10)
    before = int(http_json(claro + "/_sim/stats")["exports"])
    assert before < 10, "killed too late"
    http_json(claro + "/_sim/config", {"latency": 0.0})

    resumed = cli("run", "--exit-when-idle", "--config", str(config))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    (job,) = jobs_json(config)
    assert job["state"] == "SUCCEEDED" and job["result_rows"] == 20_000
    exports = int(http_json(claro + "/_sim/stats")["exports"])
    assert 10 <= exports <= 11  # each part once, but for the one the kill caught in the air
    with open(str(job["result_path"]), newline="") as f:
        rows = list(csv.reader(f))[1:]
    d = ClaroDataset(id="ds_kill", name="K", rows=20_000)
    assert rows == [d.row(i) for i in range(20_000)]
    assert list((tmp_path / "results").rglob("*.part")) == []


def test_kill_9_mid_clayva_import_resends_at_most_one_batch(tmp_path: Path, simulator: str) -> None:
    clayva = simulator.replace("/clari/v4", "/clayva/v1")
    http_json(clayva + "/_sim/config", {"latency": 0.15})
    inbox = tmp_path / "events"
    inbox.mkdir()
    lines = [
        json.dumps({"event": "Viewed", "userId": f"u{i % 9}", "properties": {"n": i}})
        for i in range(5_000)
    ]
    (inbox / "e.jsonl").write_text("\n".join(lines) + "\n")
    config = write_config(
        tmp_path,
        simulator,
        [
            {
                "name": "events",
                "kind": "clayva.events_import",
                "params": {"source": f"{inbox}/*.jsonl", "batchSize": 500},
            }
        ],
        providers={"clayva": {"base_url": clayva, "requests_per_minute": 6000}},
    )
    daemon = start_daemon(config, "--once")
    wait_until(lambda: int(http_json(clayva + "/_sim/stats")["batches"]) >= 3, daemon)
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.wait(10)
    http_json(clayva + "/_sim/config", {"latency": 0.0})
    resumed = cli("run", "--exit-when-idle", "--config", str(config))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    (job,) = jobs_json(config)
    assert job["state"] == "SUCCEEDED"
    stats = http_json(clayva + "/_sim/stats")
    assert stats["duplicates"] in (0, 500)  # type: ignore[index]  # at most the batch in flight
    assert stats["events"] - stats["duplicates"] == 5_000  # type: ignore[index,operator]
