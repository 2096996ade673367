"""`orchestrator backfill` as a user runs it, against a simulator in its own process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.acceptance.helpers import cli, jobs_json
from tests.conftest import API_KEY, forecast, write_config

pytestmark = pytest.mark.slow


def test_backfill_dry_run_quota_refusal_and_idempotence(tmp_path: Path, simulator: str) -> None:
    config = write_config(
        tmp_path,
        simulator,
        [{**forecast("hourly", timePeriod="{{ quarter }}"), "schedule": "0 * * * *"}],
        api_key=API_KEY,
        provider={"monthly_quota": 6, "quota_reserve": 2},
    )
    args = ["backfill", "hourly", "--config", str(config), "--from", "2026-11-01"]

    dry = cli(*args, "--to", "2026-11-01T03:00:00Z", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "3 fire time(s), 3 to enqueue" in dry.stdout and "dry run" in dry.stdout
    assert "2026-11-01T02:00:00Z  new" in dry.stdout
    assert jobs_json(config) == []

    done = json.loads(cli(*args, "--to", "2026-11-01T03:00", "--json", check=True).stdout)
    assert done["to_enqueue"] == [f"2026-11-01T0{h}:00:00Z" for h in range(3)]
    assert len(done["job_ids"]) == 3 and done["refused"] is False
    assert done["quota"] == {
        "provider": "clari",
        "left": 6,
        "queued": 0,
        "needed": 3,
        "reserve": 2,
        "left_after": 3,
        "ok": True,
    }

    # Five fires, three already enqueued: two more would leave 6 - 3 queued - 2 = 1 < 2.
    refused = cli(*args, "--to", "2026-11-01T05:00:00Z")
    assert refused.returncode == 2
    assert "3 already enqueued" in refused.stdout
    assert "below its quota_reserve of 2" in refused.stderr and "1 submission" in refused.stderr
    assert len(jobs_json(config)) == 3

    allowed = json.loads(
        cli(*args, "--to", "2026-11-01T05:00:00Z", "--allow-quota", "--json", check=True).stdout
    )
    assert allowed["already_enqueued"] == done["to_enqueue"]
    assert allowed["to_enqueue"] == ["2026-11-01T03:00:00Z", "2026-11-01T04:00:00Z"]
    jobs = jobs_json(config)
    assert sorted(str(j["fire_time"]) for j in jobs) == [
        f"2026-11-01T0{h}:00:00Z" for h in range(5)
    ]
    assert {j["params"]["timePeriod"] for j in jobs} == {"2026_Q4"}  # type: ignore[index]

    empty = cli(*args, "--to", "2026-11-01")
    assert empty.returncode == 2 and "empty range" in empty.stderr
    assert cli(*args, "--to", "yesterday-ish").returncode == 2
