"""The daemon on a PostgreSQL ledger, as a user runs it: `orchestrator run --once` in its own
process against the simulator, one job of each family (a Clari export, a Claro export in
parts, a Claravine import in chunks), then the CLI reading the ledger through either driver."""

from __future__ import annotations

import csv
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.simulator.claravine import CAMPAIGN_FIELDS
from tests.acceptance.helpers import cli, http_json, jobs_json
from tests.conftest import API_SECRET, forecast, write_config

pytestmark = pytest.mark.slow
DATASET = "4f1c2a9e-0000-4000-8000-000000000001"  # a template the simulator serves


def test_run_once_on_postgresql_finishes_every_kind_of_job(
    tmp_path: Path, simulator: str, postgres_url: str
) -> None:
    claro = simulator.replace("/clari/v4", "/claro/api/v2")
    claravine = simulator.replace("/clari/v4", "/claravine/v1")
    http_json(claro + "/_sim/datasets", [{"id": "ds_pg", "name": "PG", "rows": 5_000}])  # type: ignore[arg-type]
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    with (inbox / "campaigns.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CAMPAIGN_FIELDS)
        w.writerows([f"C{i}", "S1", "Adults", "Brand", "Ops", "2026-11"] for i in range(2_500))
    pipelines = [
        forecast("forecast"),
        {
            "name": "products",
            "kind": "claro.dataset_export",
            "params": {"datasetId": "ds_pg", "partRows": 1_000},
        },
        {
            "name": "taxonomy",
            "kind": "claravine.submission",
            "params": {"dataset": DATASET, "source": f"{inbox}/*.csv"},
        },
    ]
    providers = {
        "claro": {"base_url": claro},
        "claravine": {"base_url": claravine, "api_secret": API_SECRET},
    }
    url = postgres_url.replace("postgresql://", "postgresql+asyncpg://", 1)
    config = write_config(tmp_path, simulator, pipelines, providers=providers, ledger_url=url)

    run = cli("run", "--once", "--config", str(config))
    assert run.returncode == 0, run.stderr[-3000:]
    assert not list(tmp_path.glob("*.db")), "the ledger went to SQLite, not PostgreSQL"

    jobs = {str(j["pipeline"]): j for j in jobs_json(config)}
    assert {p: j["state"] for p, j in jobs.items()} == {
        "forecast": "SUCCEEDED",
        "products": "SUCCEEDED",
        "taxonomy": "SUCCEEDED",
    }
    for job in jobs.values():
        data = Path(str(job["result_path"])).read_bytes()
        assert hashlib.sha256(data).hexdigest() == job["result_sha256"]
    assert jobs["products"]["result_rows"] == 5_000
    assert jobs["taxonomy"]["result_rows"] == 2_500
    assert http_json(claro + "/_sim/stats")["exports"] == 5  # type: ignore[index]
    assert http_json(claravine + "/_sim/stats")["posts"] == 3  # type: ignore[index]

    # The same ledger through the other driver: the CLI reads what the daemon wrote.
    other = tmp_path / "psycopg"
    other.mkdir()
    psycopg_url = postgres_url.replace("postgresql://", "postgresql+psycopg://", 1)
    config2 = write_config(other, simulator, pipelines, providers=providers, ledger_url=psycopg_url)
    assert jobs_json(config2) == jobs_json(config)


_ONE_DRIVER = """
import asyncio, sys
sys.modules[sys.argv[2]] = None  # this driver is not installed: importing it fails
from orchestrator.domain import JobState
from orchestrator.ledger import migrate
from orchestrator.ledger.store import Ledger

async def main() -> None:
    lg = Ledger(sys.argv[1])
    await migrate.upgrade(lg)
    job = await lg.enqueue(pipeline="p", kind="clari.forecast_export", provider="clari",
                           params={}, idempotency_key=sys.argv[2], fire_time=None, max_attempts=1)
    await lg.transition(job, JobState.PENDING, JobState.SUBMITTING, quota="clari")
    assert (await lg.get(job)).state == JobState.SUBMITTING
    await lg.close()
    assert sys.argv[2] not in [m for m, mod in sys.modules.items() if mod is not None]
    print("ok")

asyncio.run(main())
"""


@pytest.mark.parametrize(
    ("scheme", "absent"),
    [("postgresql+asyncpg", "psycopg"), ("postgresql+psycopg", "asyncpg")],
)
def test_one_driver_suffices_for_its_url(postgres_url: str, scheme: str, absent: str) -> None:
    """`postgresql+asyncpg://` works without psycopg and `postgresql+psycopg://` without
    asyncpg: migrations, enqueue, a grouped transition, a read."""
    url = postgres_url.replace("postgresql://", f"{scheme}://", 1)
    proc = subprocess.run(
        [sys.executable, "-c", _ONE_DRIVER, url, absent],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
