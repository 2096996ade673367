"""The status server of a live daemon: health, readiness, Prometheus metrics, the jobs API."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.config import Config
from orchestrator.domain import JobState
from orchestrator.engine.daemon import Daemon
from orchestrator.ledger import migrate
from orchestrator.simulator.server import SimulatorServer
from tests.conftest import API_KEY, BOTH_LEDGERS, forecast
from tests.integration.helpers import wait_for_jobs


@BOTH_LEDGERS
async def test_readiness_health_metrics_and_jobs_api(
    make_config: Callable[..., Config], sim: SimulatorServer
) -> None:
    cfg = make_config([forecast("f0"), forecast("f1")])
    daemon = Daemon(cfg)
    # The server alone, before any migration: alive, not ready.
    await daemon.web.start("127.0.0.1", 0)
    base = f"http://127.0.0.1:{daemon.web.port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/healthz") as r:
            assert r.status == 200
        async with http.get(base + "/readyz") as r:
            body = await r.json()
            assert r.status == 503 and body["migrated"] is False and body["ready"] is False
        await daemon.web.stop()

        await migrate.upgrade(daemon.ledger)
        from orchestrator.scheduler import trigger

        for p in cfg.pipelines:
            await trigger(daemon.ledger, p)
        task = asyncio.create_task(daemon.run())
        await asyncio.wait_for(daemon.ready.wait(), 15)
        base = f"http://127.0.0.1:{daemon.web.port}"
        async with http.get(base + "/readyz") as r:
            assert r.status == 200 and (await r.json())["ready"] is True
        await wait_for_jobs(cfg, lambda js: all(j.state == JobState.SUCCEEDED for j in js))

        async with http.get(base + "/metrics") as r:
            assert r.status == 200
            text = await r.text()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        jobs = {
            (s.labels["kind"], s.labels["state"]): s.value
            for s in families["orchestrator_jobs"].samples
        }
        assert jobs[("clari.forecast_export", "SUCCEEDED")] == 2
        submitted = families["orchestrator_submissions"].samples
        assert sum(s.value for s in submitted if s.name.endswith("_total")) == 2
        statuses = {s.labels["status"] for s in families["orchestrator_http_responses"].samples}
        assert "200" in statuses
        assert "orchestrator_ledger_commit_seconds" in families
        assert "orchestrator_job_duration_seconds" in families
        assert "orchestrator_concurrency_in_use" in families
        assert API_KEY not in text

        async with http.get(base + "/api/jobs?limit=1") as r:
            page = await r.json()
            assert r.headers["X-Next-Offset"] == "1"
        async with http.get(base + "/api/jobs?limit=1&offset=1") as r:
            page += await r.json()
        assert sorted(j["id"] for j in page) == [1, 2]
        assert {"id", "state", "result_sha256", "remote_id"} <= set(page[0])
        async with http.get(base + "/api/jobs?state=nope") as r:
            assert r.status == 400

    daemon.stop()
    assert await asyncio.wait_for(task, 15) == 0
