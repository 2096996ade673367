"""Chaos: the daemon killed with SIGKILL at 30+ moments, mostly while a job is SUBMITTING or
FETCHING (or a part's call is in the air), and restarted each time, over Clari exports of one
module submitted concurrently from many pipelines with different params, a Claro export in
parts and a Claravine import. Whatever the kills hit: every job succeeds with exactly the remote
job made for its own params, nothing is created twice, the provider never refuses a submission
for concurrency, and no stray or partial file is left."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from orchestrator.simulator.claravine import CAMPAIGN_FIELDS
from orchestrator.simulator.claro import ClaroDataset
from tests.acceptance.helpers import cli, http_json, simulator_process, start_daemon
from tests.conftest import API_SECRET, write_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
KILLS = 32
FORECASTS = 9  # pipelines of one Clari module (FORECAST), each with its own params
AUDITS = 3  # and of another (AUDIT)
DATASET = "4f1c2a9e-0000-4000-8000-000000000001"
CLARO_ROWS, CLARO_PART = 6_000, 1_000
IMPORT_ROWS = 3_000


@pytest.fixture
def sim() -> Iterator[str]:
    """The simulator in its own process (it outlives every daemon), Clari at 3 slots."""
    yield from simulator_process(duration=0.5, concurrent_limit=3, path="")


def _pipelines(inbox: Path) -> list[dict[str, Any]]:
    forecasts = [
        {
            "name": f"fc-{i:02d}",
            "kind": "clari.forecast_export",
            "params": {
                "forecastId": f"forecast_{i % 3}",
                "timePeriod": f"2026_Q{1 + i % 4}",
                "scopeId": f"scope-{i:02d}",
                "exportFormat": "CSV" if i % 2 else "JSON",
            },
        }
        for i in range(FORECASTS)
    ]
    audits = [
        {
            "name": f"audit-{i}",
            "kind": "clari.audit_export",
            "params": {"dateFrom": f"2026-11-0{i + 1}", "actorId": 100 + i},
        }
        for i in range(AUDITS)
    ]
    return [
        *forecasts,
        *audits,
        {
            "name": "products",
            "kind": "claro.dataset_export",
            "params": {"datasetId": "ds_chaos", "partRows": CLARO_PART},
        },
        {
            "name": "taxonomy",
            "kind": "claravine.submission",
            "params": {"dataset": DATASET, "source": f"{inbox}/*.csv", "rowsPerPost": 250},
        },
    ]


def _mark(ledger: Path) -> tuple[int, str]:
    """Where the ledger stands before a run: its last transition, and the time now."""
    stamp = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
    try:
        with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=0.2) as db:
            (last,) = db.execute("SELECT coalesce(max(id), 0) FROM transitions").fetchone()
            return int(last), stamp
    except sqlite3.Error:
        return 0, stamp


def _entered(ledger: Path, mark: tuple[int, str]) -> set[str]:
    """Hot states entered since `mark`: a job to SUBMITTING or FETCHING, a part's call SENDING
    (read-only, from the side; left over from an earlier run does not count)."""
    try:
        with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=0.2) as db:
            states = {
                s
                for (s,) in db.execute(
                    "SELECT DISTINCT t.to_state FROM transitions t JOIN jobs j ON j.id = t.job_id "
                    "WHERE t.id > ? AND t.to_state IN ('SUBMITTING', 'FETCHING') "
                    "AND j.state = t.to_state",
                    (mark[0],),
                )
            }
            sending = db.execute(
                "SELECT 1 FROM job_parts WHERE state = 'SENDING' AND updated_at > ? LIMIT 1",
                (mark[1],),
            ).fetchone()
            return states | ({"SENDING"} if sending else set())
    except sqlite3.Error:
        return set()


def _unfinished(ledger: Path) -> int:
    try:
        with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=0.2) as db:
            (n,) = db.execute(
                "SELECT count(*) FROM jobs WHERE state NOT IN ('SUCCEEDED','FAILED','CANCELLED')"
            ).fetchone()
            return int(n)
    except sqlite3.Error:
        return 1


def _kill_at_a_random_moment(
    daemon: subprocess.Popen[bytes], ledger: Path, mark: tuple[int, str], rng: random.Random
) -> str:
    """Mostly a moment a job is SUBMITTING or FETCHING (or a part SENDING) — the first such
    moment at least `settle` seconds after the run's first, so work moves between kills — else
    any time (starting up, recovering, polling). Returns what the kill hit."""
    hot = rng.random() < 0.75
    settle = rng.uniform(0.0, 1.0)
    deadline = time.monotonic() + (10.0 if hot else rng.uniform(0.3, 4.0))
    first: float | None = None
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            return "exited"
        if hot and (hit := _entered(ledger, mark)):
            first = first or time.monotonic()
            if time.monotonic() - first >= settle:
                os.kill(daemon.pid, signal.SIGKILL)
                daemon.wait(10)
                return "+".join(sorted(hit))
        time.sleep(0.003)
    if daemon.poll() is not None:
        return "exited"
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.wait(10)
    return "random"


def test_kill_9_at_30_moments_loses_nothing_duplicates_nothing_exceeds_nothing(
    tmp_path: Path, sim: str
) -> None:
    started = time.monotonic()
    rng = random.Random(13)
    clari, claro, claravine = sim + "/clari/v4", sim + "/claro/api/v2", sim + "/claravine/v1"
    # Every request a little slow: SUBMITTING and FETCHING last long enough to be hit; some
    # submit answers lost (created, then the connection dropped) for reconciliation in-process.
    http_json(clari + "/_sim/config", {"latency": 0.03, "lost_submit_rate": 0.1})
    http_json(claro + "/_sim/config", {"latency": 0.03, "rate_limit": 100_000})
    http_json(claravine + "/_sim/config", {"processing_time": 0.3, "latency": 0.03})
    http_json(claro + "/_sim/datasets", [{"id": "ds_chaos", "name": "C", "rows": CLARO_ROWS}])  # type: ignore[arg-type]
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    with (inbox / "campaigns.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CAMPAIGN_FIELDS)
        w.writerows(
            [f"C{i}", "S1", "Adults", "Brand", "Ops", "2026-11"] for i in range(IMPORT_ROWS)
        )
    config = write_config(
        tmp_path,
        clari,
        _pipelines(inbox),
        provider={"retries": 1, "poll": {"initial": "0.1s", "max_interval": "0.3s"}},
        providers={
            "claro": {"base_url": claro},
            "claravine": {
                "base_url": claravine,
                "api_secret": API_SECRET,
                "poll": {"initial": "0.1s", "max_interval": "0.3s"},
            },
        },
    )
    ledger = tmp_path / "ledger.db"

    # Runs with --once while little work is left (each enqueues one more job per pipeline, so
    # the kills keep finding work), else --exit-when-idle; killed every time.
    hits: list[str] = []
    while len([h for h in hits if h != "exited"]) < KILLS:
        mode = "--once" if not hits or _unfinished(ledger) < 4 else "--exit-when-idle"
        mark = _mark(ledger)
        daemon = start_daemon(config, mode)
        hits.append(_kill_at_a_random_moment(daemon, ledger, mark, rng))
    final = cli("run", "--exit-when-idle", "--config", str(config))
    assert final.returncode == 0, final.stderr[-3000:]

    listed = cli("jobs", "list", "--json", "--limit", "100000", "--config", str(config), check=True)
    jobs = json.loads(listed.stdout)
    assert jobs and all(j["state"] == "SUCCEEDED" for j in jobs), [
        (j["id"], j["pipeline"], j["state"], j["error"]) for j in jobs if j["state"] != "SUCCEEDED"
    ]
    exports = [j for j in jobs if str(j["kind"]).startswith("clari.")]
    remote = {r["jobId"]: r for r in http_json(clari + "/_sim/jobs")}  # type: ignore[union-attr]
    # Each export has the remote job made for its own params, and no remote job is anyone
    # else's or nobody's: nothing created twice, nothing orphaned.
    for job in exports:
        made = remote[job["remote_id"]]
        sent = {k: v for k, v in job["params"].items() if k != "forecastId" and v is not None}  # type: ignore[union-attr]
        assert made["params"] == sent, (job["pipeline"], made["params"], sent)
        if job["kind"] == "clari.forecast_export":
            assert made["title"] == job["params"]["forecastId"]  # type: ignore[index]
    assert sorted(j["remote_id"] for j in exports) == sorted(remote)
    stats = http_json(clari + "/_sim/stats")
    assert stats["rejected_limits"] == 0, stats  # type: ignore[index]
    assert stats["max_active"] <= 3  # type: ignore[index]

    d = ClaroDataset(id="ds_chaos", name="C", rows=CLARO_ROWS)
    for job in (j for j in jobs if j["kind"] == "claro.dataset_export"):
        assert job["result_rows"] == CLARO_ROWS
        with open(str(job["result_path"]), newline="") as f:
            assert list(csv.reader(f))[1:] == [d.row(i) for i in range(CLARO_ROWS)]
    (imported,) = [j for j in jobs if j["kind"] == "claravine.submission"]
    assert imported["result_rows"] == IMPORT_ROWS
    cv = http_json(claravine + "/_sim/stats")
    assert cv["duplicate_names"] == 0 and cv["rows_received"] == IMPORT_ROWS, cv  # type: ignore[index]

    # No stray or partial file: the results directory holds exactly the results.
    results = tmp_path / "results"
    on_disk = {p for p in results.rglob("*") if p.is_file()}
    written = {Path(str(j["result_path"])) for j in jobs if j["kind"] != "claravine.submission"}
    assert on_disk == written, on_disk ^ written
    assert not list(results.rglob(".*")), "hidden temp or scratch entries left"

    kills = [h for h in hits if h != "exited"]
    hot = [h for h in kills if h != "random"]
    print(
        f"\nchaos: {len(kills)} kills ({len(hot)} in SUBMITTING/FETCHING/SENDING: "
        f"{sorted(set(hot))}), {len(jobs)} jobs, {len(exports)} Clari exports, "
        f"{stats['created']} created, 0 refused, {time.monotonic() - started:.0f} s"  # type: ignore[index]
    )
    assert len(hot) >= KILLS // 2, hits
