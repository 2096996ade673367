"""Pipeline summaries from a real ledger after real runs, and their metrics over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.config import Config
from orchestrator.domain import JobState
from orchestrator.engine.daemon import Daemon
from orchestrator.ledger.store import Ledger, utcnow
from orchestrator.pipelines import statuses
from orchestrator.simulator.server import SimulatorServer
from tests.conftest import forecast
from tests.integration.helpers import run_once, start


async def test_failure_streak_last_success_and_metrics(
    make_config: Callable[..., Config], sim: SimulatorServer
) -> None:
    cfg = make_config(
        [
            {**forecast("good"), "schedule": "every 1h"},
            {**forecast("bad", forecastId="no_such_forecast"), "max_attempts": 1},
            {**forecast("never"), "schedule": "0 0 30 2 *"},
        ]
    )
    before = utcnow()
    for _ in range(2):
        assert await run_once(cfg, once=True) == 1  # "bad" fails each time

    ledger = Ledger(cfg.ledger.url)
    try:
        rows = {s.config.name: s.to_dict() for s in await statuses(cfg, ledger)}
    finally:
        await ledger.close()
    good, bad, never = rows["good"], rows["bad"], rows["never"]
    assert good["health"] == "ok" and good["consecutive_failures"] == 0
    assert good["last_run"]["state"] == "SUCCEEDED"
    assert good["last_success_at"] >= before.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert good["next_fire"].endswith(":00:00Z") and good["interval_seconds"] == 3600
    assert bad["health"] == "failing" and bad["consecutive_failures"] == 2
    assert bad["last_run"]["state"] == JobState.FAILED.value and bad["last_success_at"] is None
    assert bad["next_fire"] is None and bad["schedule"] is None
    assert never["next_fire"] is None and never["health"] == "idle"  # it never fires

    daemon = Daemon(cfg)
    task = await start(daemon)
    try:
        url = f"http://127.0.0.1:{daemon.web.port}/metrics"
        async with aiohttp.ClientSession() as http, http.get(url) as r:
            text = await r.text()
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 15)
    fams = {f.name: f for f in text_string_to_metric_families(text)}

    def by_pipeline(name: str) -> dict[str, float]:
        return {s.labels["pipeline"]: s.value for s in fams[name].samples}

    assert by_pipeline("orchestrator_pipeline_consecutive_failures") == {
        "good": 0,
        "bad": 2,
        "never": 0,
    }
    success = by_pipeline("orchestrator_pipeline_last_success_timestamp_seconds")
    assert set(success) == {"good", "never"} and success["good"] >= before.timestamp()
    fires = by_pipeline("orchestrator_pipeline_next_fire_timestamp_seconds")
    assert set(fires) == {"good"} and fires["good"] % 3600 == 0
    assert by_pipeline("orchestrator_pipeline_interval_seconds") == {"good": 3600}
    left = {s.labels["provider"]: s.value for s in fams["orchestrator_quota_left"].samples}
    reserve = {s.labels["provider"]: s.value for s in fams["orchestrator_quota_reserve"].samples}
    # four exports created; the rejected submissions of "bad" cost nothing
    assert reserve == {"clari": 0} and left == {"clari": 1000 - 4}
