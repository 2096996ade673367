"""`orchestrator quota`: per provider account, limits, used, reserved and the schedules' projected
use over the next 30 days."""

from __future__ import annotations

from typing import Any

from orchestrator.checks import projected
from orchestrator.config import Config
from orchestrator.domain import JobState
from orchestrator.engine.context import Context
from orchestrator.errors import ProviderError
from orchestrator.ledger.store import Ledger, utcnow
from orchestrator.limits import QUOTA_WINDOW, AccountBudget


def quota_left(budget: AccountBudget) -> int | None:
    """Units left in the rolling window before the reserve is taken off, not clamped at zero
    (AccountBudget.free_quota() is, and takes the reserve off): below `caps.reserve` means the
    account's reserve is being used. None when no limit is known."""
    frees: list[int] = []
    if budget.caps.monthly_quota is not None:
        frees.append(budget.caps.monthly_quota - budget.used)
    if budget.remote is not None:
        frees.append(budget.remote.available_quota - budget.since_submitted)
    return min(frees) if frees else None


def over_quota(projected: int, limit: int | None, reserve: int) -> str | None:
    """A warning when the schedules would submit more in 30 days than the quota allows."""
    if limit is None or projected <= limit - reserve:
        return None
    return (
        f"the schedules would submit {projected:,} jobs in 30 days, over the {limit - reserve:,} "
        f"the quota allows ({limit:,} less quota_reserve {reserve:,})"
    )


def projected_runs(cfg: Config, account: str) -> int:
    return projected(cfg, account, utcnow())


async def quota_report(cfg: Config, ledger: Ledger, *, online: bool = True) -> dict[str, Any]:
    ctx = Context.build(cfg, ledger, connect=online)
    out: dict[str, Any] = {}
    try:
        for name, budget in ctx.budgets.items():
            if online:
                await ctx.refresh_budget(name)
            else:
                budget.in_flight = await ledger.in_flight_count(name)
                budget.used = len(await ledger.quota_times(name, utcnow() - QUOTA_WINDOW))
            submitting = await ledger.list_jobs(states=[JobState.SUBMITTING], provider=name)
            remote = budget.remote
            out[name] = {
                "type": cfg.account_type(name),  # the provider: accounts may share one
                "monthly_quota": budget.quota_limit(),
                "quota_reserve": budget.caps.reserve,
                "used": budget.used,
                "reserved": len(submitting),
                "available": budget.free_quota(),
                "provider_available_quota": remote.available_quota if remote else None,
                "concurrency_limit": budget.concurrency_limit(),
                "in_flight": budget.in_flight,
                "free_slots": budget.free_slots(),
                "projected_30d": projected_runs(cfg, name),
                "quota_warning": None,
                "credits_used_30d": await ledger.credits_used(name, utcnow() - QUOTA_WINDOW),
                "credits_limit": None,
                "credits_remaining": None,
            }
            out[name]["quota_warning"] = over_quota(
                out[name]["projected_30d"], budget.quota_limit(), budget.caps.reserve
            )
            usage = getattr(ctx.adapters.get(name), "usage", None)
            if online and usage is not None:  # clariBI: credits are its quota
                try:
                    credits = (await usage()).get("credits") or {}
                    out[name]["credits_limit"] = credits.get("limit")
                    out[name]["credits_remaining"] = credits.get("remaining")
                except ProviderError as exc:
                    out[name]["credits_error"] = str(exc)
    finally:
        await ctx.close()
    return out
