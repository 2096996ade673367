"""`orchestrator pipelines` and `pipelines show` as a user runs them: subprocesses, a simulator
in its own process, and no provider secret in the environment of the read-only commands."""

from __future__ import annotations

import itertools
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.acceptance.helpers import cli
from tests.conftest import API_KEY, forecast, write_config

pytestmark = pytest.mark.slow
KEY_VAR = "ORCH_TEST_CLARI_KEY"


def _env(with_key: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != KEY_VAR}
    return {**env, KEY_VAR: API_KEY} if with_key else env


def test_pipelines_list_and_show_without_secrets(tmp_path: Path, simulator: str) -> None:
    config = write_config(
        tmp_path,
        simulator,
        [
            {**forecast("daily", timePeriod="{{ quarter }}"), "schedule": "0 6 * * *"},
            {**forecast("broken", forecastId="no_such_forecast"), "max_attempts": 1},
            {**forecast("paused"), "schedule": "every 15m", "enabled": False},
        ],
        api_key="${" + KEY_VAR + "}",
    )
    run = cli("run", "--once", "--config", str(config), env=_env(True))
    assert run.returncode == 1, run.stderr[-2000:]  # "broken" failed

    listed = cli("pipelines", "--json", "--config", str(config), env=_env(False))
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert list(rows) == ["daily", "broken", "paused"]
    keys = {"name", "kind", "provider", "schedule", "enabled", "next_fire", "last_run"}
    keys |= {"last_success_at", "consecutive_failures", "health"}
    assert keys <= set(rows["daily"])
    daily, broken, paused = rows["daily"], rows["broken"], rows["paused"]
    assert daily["health"] == "ok" and daily["provider"] == "clari"
    assert daily["next_fire"].endswith("T06:00:00Z")
    assert set(daily["last_run"]) == {"id", "state", "finished_at"}
    assert daily["last_run"]["state"] == "SUCCEEDED" and daily["last_success_at"] is not None
    assert broken["health"] == "failing" and broken["consecutive_failures"] == 1
    assert paused["enabled"] is False and paused["next_fire"] is None
    assert paused["health"] == "idle" and paused["last_run"] is None  # --once skips it

    table = cli("pipelines", "--config", str(config), env=_env(False))
    assert table.returncode == 0 and "failing" in table.stdout and "daily" in table.stdout

    show = cli("pipelines", "show", "daily", "--json", "--config", str(config), env=_env(False))
    assert show.returncode == 0, show.stderr
    data = json.loads(show.stdout)
    fires = [datetime.fromisoformat(f) for f in data["next_fires"]]
    assert len(fires) == 5 and fires[0] > datetime.now(UTC)
    assert all(b - a == timedelta(days=1) for a, b in itertools.pairwise(fires))
    assert data["params_for"] == data["next_fires"][0] == data["next_fire"]
    quarter = f"{fires[0].year}_Q{(fires[0].month - 1) // 3 + 1}"
    assert data["params"] == {"forecastId": "fc_1", "timePeriod": quarter, "exportFormat": "CSV"}

    jobs = cli("jobs", "list", "--json", "--config", str(config), env=_env(True))
    assert len(json.loads(jobs.stdout)) == 2  # the dry run enqueued nothing

    text = cli("pipelines", "show", "daily", "--config", str(config), env=_env(False))
    assert text.returncode == 0 and quarter in text.stdout
    missing = cli("pipelines", "show", "nope", "--config", str(config), env=_env(False))
    assert missing.returncode == 2 and "daily" in missing.stderr
