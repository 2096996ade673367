"""`orchestrator backfill PIPELINE --from T --to T`: one job per schedule fire time in [from, to),
its params rendered for that fire time, under the very idempotency key the scheduler gives that
fire (scheduler.scheduled_key): a fire already run, by the scheduler or an earlier backfill, is
never enqueued again, and a scheduler firing during the backfill cannot double it either.

Before enqueuing, the account's quota: what is left in the rolling 30 days (the lower of our
`monthly_quota` cap and the provider's own figure), less what is queued and not yet submitted,
less the backfill, must stay at or above `quota_reserve` — else the backfill is refused with the
numbers, unless the operator allows it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from orchestrator.config import Config, PipelineConfig
from orchestrator.engine.context import Context
from orchestrator.ledger.store import Ledger, utcnow
from orchestrator.pipelines import iso
from orchestrator.providers import KINDS, kinds_of
from orchestrator.quota import quota_left
from orchestrator.schedule import fire_times_between, parse_schedule
from orchestrator.scheduler import enqueue_run_all, scheduled_key

MAX_FIRES = 10_000


class BackfillError(ValueError):
    """A backfill that cannot be planned (bad range, no schedule); a usage error."""


def parse_when(value: str, timezone: str) -> datetime:
    """'2026-11-01' (midnight) or '2026-11-01T06:00[:00][+01:00|Z]'; without an offset the time
    is in the daemon's timezone, as the schedules are."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            parsed = datetime.combine(date.fromisoformat(value), time())
        except ValueError:
            raise BackfillError(
                f"{value!r} is not a date (2026-11-01) or date-time (2026-11-01T06:00:00Z)"
            ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=ZoneInfo(timezone))
    return parsed.astimezone(UTC)


def fire_times_in(trigger: Any, start: datetime, end: datetime) -> list[datetime]:
    """Fire times t with start <= t < end, oldest first."""
    fires = fire_times_between(trigger, start - timedelta(microseconds=1), end)
    return [f.astimezone(UTC) for f in fires if f < end]


@dataclass(frozen=True, kw_only=True, slots=True)
class QuotaCheck:
    provider: str
    left: int | None  # in the rolling window, before the reserve; None: no limit known
    queued: int  # PENDING/RETRY_WAIT jobs of the account: they will spend quota too
    needed: int
    reserve: int

    @property
    def left_after(self) -> int | None:
        return None if self.left is None else self.left - self.queued - self.needed

    @property
    def ok(self) -> bool:
        return self.left_after is None or self.left_after >= self.reserve

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "left": self.left,
            "queued": self.queued,
            "needed": self.needed,
            "reserve": self.reserve,
            "left_after": self.left_after,
            "ok": self.ok,
        }

    def refusal(self) -> str:
        return (
            f"refused: {self.needed} backfill job(s) would leave {self.provider} "
            f"{self.left_after} submission(s) in its rolling 30 days, below its quota_reserve of "
            f"{self.reserve} ({self.left} left, {self.queued} already queued); "
            "pass --allow-quota to enqueue them anyway"
        )


@dataclass(kw_only=True, slots=True)
class Backfill:
    pipeline: PipelineConfig
    start: datetime
    end: datetime
    clamped: bool  # --to was in the future: later fires are the scheduler's
    fires: list[datetime]
    taken: set[datetime]
    quota: QuotaCheck | None = None
    job_ids: list[int] = field(default_factory=list)

    @property
    def new(self) -> list[datetime]:
        return [f for f in self.fires if f not in self.taken]

    def to_dict(self, *, dry_run: bool) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline.name,
            "from": iso(self.start),
            "to": iso(self.end),
            "to_clamped_to_now": self.clamped,
            "dry_run": dry_run,
            "fire_times": [iso(f) for f in self.fires],
            "to_enqueue": [iso(f) for f in self.new],
            "already_enqueued": [iso(f) for f in self.fires if f in self.taken],
            "job_ids": self.job_ids,
            "quota": self.quota.to_dict() if self.quota else None,
        }


async def plan(
    cfg: Config, ledger: Ledger, p: PipelineConfig, start: datetime, end: datetime
) -> Backfill:
    if not p.schedule:
        raise BackfillError(f"pipeline {p.name!r} has no schedule: there are no fire times")
    now = utcnow()
    clamped = end > now
    end = min(end, now)
    if start >= end:
        raise BackfillError(f"empty range: --from {iso(start)} is not before --to {iso(end)}")
    fires = fire_times_in(parse_schedule(p.schedule, cfg.daemon.timezone), start, end)
    if len(fires) > MAX_FIRES:
        raise BackfillError(f"{len(fires)} fire times: at most {MAX_FIRES} per backfill")
    keys = {scheduled_key(p.name, f): f for f in fires}
    taken = {keys[k] for k in await ledger.taken_keys(list(keys))}
    return Backfill(pipeline=p, start=start, end=end, clamped=clamped, fires=fires, taken=taken)


async def check_quota(cfg: Config, ledger: Ledger, backfill: Backfill) -> QuotaCheck | None:
    """The account's quota after the backfill (None for kinds that spend none)."""
    p = backfill.pipeline
    if not KINDS[p.kind].budgeted:
        return None
    budgeted = kinds_of(KINDS[p.kind].provider, budgeted=True)
    ctx = Context.build(cfg, ledger)
    try:
        await ctx.refresh_budget(p.provider)  # the provider's own figure where it gives one
        budget = ctx.budgets[p.provider]
        return QuotaCheck(
            provider=p.provider,
            left=quota_left(budget),
            queued=await ledger.queued_count(p.provider, budgeted),
            needed=len(backfill.new),
            reserve=budget.caps.reserve,
        )
    finally:
        await ctx.close()


async def enqueue(ledger: Ledger, backfill: Backfill) -> list[int]:
    """Enqueue every new fire; a fire the scheduler took meanwhile is skipped by its key."""
    p = backfill.pipeline
    for fire in backfill.new:
        backfill.job_ids += await enqueue_run_all(
            ledger, p, fire_time=fire, key=scheduled_key(p.name, fire), reason="backfill"
        )
    return backfill.job_ids
