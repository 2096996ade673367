"""Cron and interval schedules. The scheduler only enqueues, idempotently per (pipeline, fire time):
the ledger's unique idempotency key makes a double fire, or two daemons, harmless."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from orchestrator.config import Config, PipelineConfig
from orchestrator.ledger.store import Ledger, utcnow
from orchestrator.providers import KINDS
from orchestrator.schedule import MAX_SCAN, latest_fire_time, missed_runs, parse_schedule
from orchestrator.templating import render

log = structlog.get_logger(__name__)
FIRE_LOOKBACK = timedelta(minutes=10)
MISFIRE_GRACE = 300  # seconds a late fire still runs (event loop blocked, clock jump)


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def enqueue_run(
    ledger: Ledger,
    pipeline: PipelineConfig,
    *,
    fire_time: datetime,
    key: str,
    reason: str,
    retry_of: int | None = None,
) -> int | None:
    """Render the pipeline's params for this fire time and add one PENDING job, or, for kinds
    that expand (imports: one job per new source file), one job per new item. Returns the first
    new job's id, None when nothing new was enqueued."""
    ids = await enqueue_run_all(
        ledger, pipeline, fire_time=fire_time, key=key, reason=reason, retry_of=retry_of
    )
    return ids[0] if ids else None


async def enqueue_run_all(
    ledger: Ledger,
    pipeline: PipelineConfig,
    *,
    fire_time: datetime,
    key: str,
    reason: str,
    retry_of: int | None = None,
) -> list[int]:
    """As enqueue_run; returns every new job's id."""
    params = render(pipeline.params, fire_time)
    spec = KINDS[pipeline.kind]
    params = spec.params_model.model_validate(params).model_dump(
        mode="json", exclude_none=True, by_alias=True
    )
    deadline = fire_time + timedelta(seconds=pipeline.deadline) if pipeline.deadline else None
    if deadline is not None and deadline < utcnow():
        deadline = utcnow() + timedelta(seconds=pipeline.deadline or 0)
    items = [(key, params)]
    if spec.expand is not None:
        items = await spec.expand(ledger, pipeline.name, params, key)
        if not items:
            log.info("nothing_new", pipeline=pipeline.name, reason=reason)
    new: list[int] = []
    for item_key, item_params in items:
        job_id = await ledger.enqueue(
            pipeline=pipeline.name,
            kind=pipeline.kind,
            provider=pipeline.provider,
            params=item_params,
            idempotency_key=item_key,
            fire_time=fire_time,
            max_attempts=pipeline.max_attempts,
            deadline_at=deadline,
            reason=reason,
            retry_of=retry_of,
        )
        if job_id is not None:
            log.info("job_enqueued", job_id=job_id, pipeline=pipeline.name, reason=reason)
            new.append(job_id)
    return new


async def trigger(
    ledger: Ledger, pipeline: PipelineConfig, *, reason: str = "triggered"
) -> int | None:
    """Enqueue one run now. None only for an import whose source holds nothing new."""
    ids = await trigger_all(ledger, pipeline, reason=reason)
    return ids[0] if ids else None


async def trigger_all(
    ledger: Ledger, pipeline: PipelineConfig, *, reason: str = "triggered"
) -> list[int]:
    """Enqueue one run now; every new job's id (an import: one per new file)."""
    now = utcnow()
    return await enqueue_run_all(
        ledger, pipeline, fire_time=now, key=f"manual:{pipeline.name}:{uuid.uuid4()}", reason=reason
    )


def scheduled_key(pipeline: str, fire_time: datetime) -> str:
    return f"sched:{pipeline}:{_iso(fire_time)}"


class PipelineScheduler:
    def __init__(self, cfg: Config, ledger: Ledger, on_enqueued: Any = None) -> None:
        self.cfg = cfg
        self.ledger = ledger
        self.on_enqueued = on_enqueued
        self.triggers: dict[str, Any] = {}
        self._sched: AsyncIOScheduler | None = None

    @property
    def running(self) -> bool:
        return self._sched is not None and bool(self._sched.running)

    async def catch_up(self) -> None:
        """Apply each pipeline's missed-run policy for fires that fell while we were down."""
        now = utcnow()
        for p in self._scheduled():
            last = await self.ledger.last_fire_time(p.name)
            fires = missed_runs(self.triggers[p.name], last, now, p.missed_runs, p.max_catch_up)
            if p.missed_runs == "all" and len(fires) == p.max_catch_up:
                every = missed_runs(self.triggers[p.name], last, now, "all", MAX_SCAN)
                if len(every) > len(fires):
                    log.warning(
                        "missed_runs_capped",
                        pipeline=p.name,
                        missed=len(every),
                        enqueued=len(fires),
                        backfill_from=_iso(every[0]),
                        backfill_to=_iso(fires[0]),
                    )
            for fire in fires:
                await self._enqueue(p, fire, reason=f"missed run ({p.missed_runs})")

    def _scheduled(self) -> list[PipelineConfig]:
        out = []
        for p in self.cfg.pipelines:
            if p.enabled and p.schedule:
                self.triggers.setdefault(
                    p.name, parse_schedule(p.schedule, self.cfg.daemon.timezone)
                )
                out.append(p)
        return out

    async def start(self) -> None:
        pipelines = self._scheduled()
        await self.catch_up()
        self._sched = AsyncIOScheduler(timezone=self.cfg.daemon.timezone)
        for p in pipelines:
            self._sched.add_job(
                self._fire,
                self.triggers[p.name],
                args=[p.name],
                id=p.name,
                name=p.name,
                coalesce=True,
                max_instances=1,
                misfire_grace_time=MISFIRE_GRACE,
            )
        self._sched.start()
        log.info("scheduler_started", pipelines=len(pipelines))

    def shutdown(self) -> None:
        if self._sched is not None and self._sched.running:
            self._sched.shutdown(wait=False)

    def next_fire_times(self) -> dict[str, datetime | None]:
        if self._sched is None:
            return {}
        return {job.id: job.next_run_time for job in self._sched.get_jobs()}

    async def _fire(self, name: str) -> None:
        pipeline = self.cfg.pipeline(name)
        fire = latest_fire_time(self.triggers[name], utcnow(), FIRE_LOOKBACK) or utcnow()
        await self._enqueue(pipeline, fire, reason="scheduled")

    async def _enqueue(self, pipeline: PipelineConfig, fire: datetime, *, reason: str) -> None:
        try:
            job_id = await enqueue_run(
                self.ledger,
                pipeline,
                fire_time=fire,
                key=scheduled_key(pipeline.name, fire),
                reason=reason,
            )
        except Exception as exc:  # a bad render must not kill the scheduler
            log.error("enqueue_failed", pipeline=pipeline.name, error=str(exc))
            return
        if job_id is not None and self.on_enqueued is not None:
            self.on_enqueued()
