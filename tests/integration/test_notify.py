"""Notifications delivered to a real aiohttp webhook on loopback, through the daemon's outbox."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from orchestrator.config import load_config
from orchestrator.ledger.store import Ledger
from orchestrator.notify import Notifications, redact_url
from orchestrator.simulator.server import SimulatorServer
from tests.conftest import forecast, write_config
from tests.integration.helpers import run_once

TOKEN = "T0KEN-xq81-secret"


@dataclass
class Hook:
    url: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)
    fail_next: int = 0  # answer this many requests with 503 first


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    state = Hook()

    async def receive(request: web.Request) -> web.Response:
        if state.fail_next > 0:
            state.fail_next -= 1
            return web.Response(status=503, text="busy")
        state.bodies.append(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post(f"/services/{TOKEN}", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.url = f"http://127.0.0.1:{runner.addresses[0][1]}/services/{TOKEN}"
    try:
        yield state
    finally:
        await runner.cleanup()


def config_with_hook(tmp_path: Path, sim: SimulatorServer, hook: Hook, forecast_id: str) -> Path:
    path = write_config(
        tmp_path,
        sim.base_url("clari"),
        [{**forecast("flaky", forecastId=forecast_id), "max_attempts": 1}],
    )
    path.write_text(
        path.read_text()
        + f'[[notify]]\nurl = "{hook.url}"\non = ["failed", "recovered"]\n'
        + f'[[notify]]\nurl = "{hook.url}"\npipelines = ["flaky"]\non = ["late"]\n'
    )
    return path


async def test_failure_then_recovery_reach_the_webhook_with_retries(
    tmp_path: Path, sim: SimulatorServer, hook: Hook, capfd: pytest.CaptureFixture[str]
) -> None:
    hook.fail_next = 1  # the first delivery attempt is refused: the outbox keeps it
    bad = load_config(config_with_hook(tmp_path, sim, hook, "no_such_forecast"))
    ledger = Ledger(bad.ledger.url)
    from orchestrator.ledger import migrate

    await migrate.upgrade(ledger)
    notes = Notifications(bad, ledger)
    await notes.start()  # the cursor, as a daemon's start sets it
    await ledger.close()

    assert await run_once(bad) == 1
    assert hook.bodies == []  # refused once; retried later with backoff
    good = load_config(config_with_hook(tmp_path, sim, hook, "fc_1"))
    assert await run_once(good) == 0  # at start every pending notification is tried again

    events = [(b["event"], b["pipeline"]) for b in hook.bodies]
    assert events == [("failed", "flaky"), ("recovered", "flaky")]
    failed, recovered = hook.bodies
    assert failed["text"].startswith(":x: pipeline flaky failed: job 1 after 1 attempt(s)")
    assert failed["job_id"] == 1 and "no_such_forecast" in failed["error"]
    assert recovered["job_id"] == 2 and "recovered" in recovered["text"]

    ledger = Ledger(good.ledger.url)
    try:
        rows = {r["event"]: r for r in await ledger.outbox_list()}
    finally:
        await ledger.close()
    assert set(rows) == {"failed", "recovered"}  # the late-only target wanted neither
    assert rows["failed"]["state"] == "DELIVERED" and rows["failed"]["attempts"] == 2
    assert rows["failed"]["last_error"] == "HTTP 503: busy"
    assert rows["recovered"]["attempts"] == 1
    assert TOKEN not in json.dumps([dict(r) for r in rows.values()], default=str)
    logs = capfd.readouterr()
    assert TOKEN not in logs.out + logs.err
    assert redact_url(hook.url) in logs.out + logs.err  # the failed attempt, logged redacted


async def test_notify_test_reports_each_webhook_redacted(
    tmp_path: Path, sim: SimulatorServer, hook: Hook
) -> None:
    cfg = load_config(config_with_hook(tmp_path, sim, hook, "fc_1"))
    notes = Notifications(cfg, Ledger(cfg.ledger.url))
    try:
        assert await notes.send_test() == {redact_url(hook.url): None}
        hook.fail_next = 1
        assert await notes.send_test() == {redact_url(hook.url): "HTTP 503: busy"}
    finally:
        await notes.close()
        await notes.ledger.close()
    assert [b["event"] for b in hook.bodies] == ["test"]
