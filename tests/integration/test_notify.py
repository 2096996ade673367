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
    from orchestrator.logging import configure

    configure(json=True, level="INFO")  # whatever an earlier test of this process set
    hook.fail_next = 1  # the first delivery attempt is refused: the outbox keeps it
    bad = load_config(config_with_hook(tmp_path, sim, hook, "no_such_forecast"))
    ledger = Ledger(bad.ledger.url)
    from orchestrator.ledger import migrate

    await migrate.upgrade(ledger)
    notes = Notifications(bad, ledger)
    await notes.start()  # the cursor, as a daemon's start sets it
    await ledger.close()

    assert await run_once(bad) == 1
    assert hook.fail_next == 0  # the first attempt was refused; it is retried after a backoff
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


async def test_late_quota_low_and_credits_low_are_sent_once(
    tmp_path: Path, sim: SimulatorServer, hook: Hook
) -> None:
    from datetime import timedelta

    from orchestrator.engine.context import Context
    from orchestrator.ledger import migrate
    from orchestrator.ledger.store import utcnow
    from orchestrator.notify import DaemonView
    from orchestrator.pipelines import statuses
    from tests.conftest import CLARIBI_KEY

    sim.sims.claribi.config.credits_used = 4_900  # of 5,000: under 10% left
    prov = {"base_url": sim.base_url("claribi"), "api_key": CLARIBI_KEY}
    path = write_config(
        tmp_path,
        sim.base_url("clari"),
        [{**forecast("hourly"), "schedule": "every 1h"}],
        providers={"claribi": prov},
        provider={"monthly_quota": 4, "quota_reserve": 3},  # clari: room for one run
    )
    path.write_text(path.read_text() + f'[[notify]]\nurl = "{hook.url}"\n')
    cfg = load_config(path)
    assert await run_once(cfg) == 0  # one success, then the schedule stops being kept

    ledger = Ledger(cfg.ledger.url)
    await migrate.upgrade(ledger)
    ctx = Context.build(cfg, ledger)
    notes = Notifications(cfg, ledger)
    try:
        for name in ctx.budgets:
            await ctx.refresh_budget(name)
        view = DaemonView(ctx)
        found, accounts = await view()
        assert accounts["clari"] == {"left": 3, "reserve": 3}  # 4 - the one run: at the reserve
        assert accounts["claribi"]["credits_remaining"] == 100
        late = await statuses(cfg, ledger, now=utcnow() + timedelta(hours=3))
        assert [s.health for s in found] == ["ok"] and [s.health for s in late] == ["late"]
        # The daemon of run_once observed too (credits low from its start; the quota maybe):
        # whatever it queued is not queued again.
        queued = await notes.observe(late, accounts)
        assert 1 <= queued <= 3
        assert await notes.observe(late, accounts) == 0  # the same episode, the same day
        assert await notes.deliver_due() == queued
    finally:
        await notes.close()
        await ctx.close()
        await ledger.close()
    bodies = {b["event"]: b for b in hook.bodies}
    assert sorted(b["event"] for b in hook.bodies) == ["credits_low", "late", "quota_low"]
    assert bodies["late"]["pipeline"] == "hourly" and "is late" in bodies["late"]["text"]
    assert bodies["quota_low"]["left"] == 3 and bodies["quota_low"]["reserve"] == 3
    assert bodies["credits_low"] == {
        **bodies["credits_low"],
        "provider": "claribi",
        "remaining": 100,
        "limit": 5000,
    }


async def test_one_scan_tells_failure_then_recovery_in_order(
    tmp_path: Path, sim: SimulatorServer, hook: Hook
) -> None:
    from orchestrator.domain import JobState as S
    from orchestrator.ledger import migrate

    cfg = load_config(config_with_hook(tmp_path, sim, hook, "fc_1"))
    ledger = Ledger(cfg.ledger.url)
    await migrate.upgrade(ledger)
    notes = Notifications(cfg, ledger)
    try:
        await notes.start()
        ends = [S.SUCCEEDED, S.FAILED, S.FAILED, S.SUCCEEDED, S.SUCCEEDED, S.FAILED]
        for n, end in enumerate(ends):
            job = await ledger.enqueue(
                pipeline="flaky",
                kind="clari.forecast_export",
                provider="clari",
                params={},
                idempotency_key=f"k{n}",
                fire_time=None,
                max_attempts=1,
            )
            assert job is not None
            for src, dst in ((S.PENDING, S.SUBMITTING), (S.SUBMITTING, S.RUNNING)):
                await ledger.transition(job, src, dst)
            await ledger.transition(job, S.RUNNING, end, error="boom" if end == S.FAILED else None)
        assert await notes.scan() == 4  # all six finished jobs in one batch
        assert await notes.scan() == 0
        assert await notes.deliver_due() == 4
    finally:
        await notes.close()
        await ledger.close()
    assert [(b["event"], b["job_id"]) for b in hook.bodies] == [
        ("failed", 2),
        ("failed", 3),
        ("recovered", 4),  # the first success after the failures, not the one after it
        ("failed", 6),
    ]


async def test_a_failing_webhook_costs_one_attempt_per_round(
    tmp_path: Path, sim: SimulatorServer, hook: Hook
) -> None:
    from orchestrator.ledger import migrate
    from orchestrator.ledger.store import utcnow
    from orchestrator.notify import quota_low_event

    path = config_with_hook(tmp_path, sim, hook, "fc_1")
    path.write_text(path.read_text() + f'[[notify]]\nurl = "{hook.url}"\non = ["quota_low"]\n')
    cfg = load_config(path)
    ledger = Ledger(cfg.ledger.url)
    await migrate.upgrade(ledger)
    notes = Notifications(cfg, ledger)
    try:
        events = [quota_low_event(p, 0, 1, utcnow()) for p in ("clari", "claro", "claribi")]
        assert await notes.queue(events) == 3  # for the third entry only
        hook.fail_next = 10
        assert await notes.deliver_due(everything=True) == 0
        assert hook.fail_next == 9  # one refused request; the other two waited their turn
        rows = sorted(r["attempts"] for r in await ledger.outbox_list())
        assert rows == [0, 0, 1]
        hook.fail_next = 0
        assert await notes.deliver_due(everything=True) == 3
    finally:
        await notes.close()
        await ledger.close()
    assert sorted(b["provider"] for b in hook.bodies) == ["clari", "claribi", "claro"]
