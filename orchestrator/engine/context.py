"""What every engine part shares: config, ledger, one adapter and one budget per account."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta

import structlog

from orchestrator.backoff import RetryPolicy, retry_delay
from orchestrator.config import Config
from orchestrator.domain import Job, JobState
from orchestrator.ledger.store import Ledger, utcnow
from orchestrator.limits import QUOTA_WINDOW, AccountBudget, Caps
from orchestrator.metrics import Metrics
from orchestrator.providers import KINDS, adapter_factory, kinds_of
from orchestrator.providers.base import ProviderAdapter

log = structlog.get_logger(__name__)


@dataclass(kw_only=True)
class Stats:
    finished: Counter[str] = field(default_factory=Counter)
    submissions: int = 0
    polls: int = 0
    retries: int = 0
    quota_rejections: int = 0


class Unbudgeted:
    """The budget of kinds that use none of the account's export slots or quota (Clari ingest:
    its own concurrent-ingestion limit, answered with 429 by Clari)."""

    def can_submit(self) -> bool:
        return True

    def on_reserve(self, job_id: int) -> None: ...

    def on_answered(self, job_id: int) -> None: ...

    def on_unreserve(self, job_id: int) -> None: ...

    def on_seen_active(self, job_id: int, sent_at: float) -> None: ...

    def on_slot_released(self, job_id: int) -> None: ...

    def on_provider_full(self) -> None: ...


UNBUDGETED_SUFFIX = "#unbudgeted"
UNBUDGETED = Unbudgeted()


def budget_key(job: Job) -> str:
    """Which budget a job draws on: its provider's, or none for unbudgeted kinds."""
    spec = KINDS.get(job.kind)
    return (
        job.provider + UNBUDGETED_SUFFIX if spec is not None and not spec.budgeted else job.provider
    )


@dataclass(kw_only=True)
class Context:
    cfg: Config
    ledger: Ledger
    adapters: dict[str, ProviderAdapter]
    budgets: dict[str, AccountBudget]
    stats: Stats = field(default_factory=Stats)
    metrics: Metrics = field(default_factory=Metrics)
    rng: random.Random = field(default_factory=random.Random)
    wake_dispatch: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # Replica leases (engine/ownership.py): the accounts this process may call (None: every
    # account, no leases kept), and those of them closed to new submissions (being reconciled
    # after a takeover, or being given back).
    held: set[str] | None = None
    closed: set[str] = field(default_factory=set)

    @classmethod
    def build(cls, cfg: Config, ledger: Ledger, *, connect: bool = True) -> Context:
        """`connect=False`: budgets only, no adapters (no secrets, no sessions), for reports
        from the ledger alone."""
        adapters: dict[str, ProviderAdapter] = {}
        budgets: dict[str, AccountBudget] = {}
        for name, prov in cfg.providers.items():
            factory = adapter_factory(prov)
            if factory is None:
                log.warning("provider_not_supported", provider=name)
                continue
            if connect:
                adapters[name] = factory(prov)
            budgets[name] = AccountBudget(
                caps=Caps(
                    concurrency=prov.concurrency or getattr(factory, "default_concurrency", None),
                    monthly_quota=prov.monthly_quota,
                    reserve=prov.quota_reserve,
                )
            )
        return cls(cfg=cfg, ledger=ledger, adapters=adapters, budgets=budgets)

    def may_call(self, account: str) -> bool:
        return self.held is None or account in self.held

    def may_submit(self, account: str) -> bool:
        return self.may_call(account) and account not in self.closed

    def budget_for(self, job: Job) -> AccountBudget | Unbudgeted:
        key = budget_key(job)
        return UNBUDGETED if key.endswith(UNBUDGETED_SUFFIX) else self.budgets[job.provider]

    def budget_named(self, key: str) -> AccountBudget | Unbudgeted | None:
        if key.endswith(UNBUDGETED_SUFFIX):
            provider = key.removesuffix(UNBUDGETED_SUFFIX)
            return UNBUDGETED if provider in self.adapters else None
        return self.budgets.get(key)

    async def close(self) -> None:
        for adapter in self.adapters.values():
            await adapter.close()

    def finished(self, job: Job, state: JobState, **detail: object) -> None:
        """Count a job that reached a terminal state and log its one `job_finished` line
        (with `detail`: a result's path, bytes, sha256 and rows)."""
        self.stats.finished[state.value] += 1
        if job.created_at is not None:
            self.metrics.job_seconds.labels(job.provider, job.kind, state.value).observe(
                (utcnow() - job.created_at).total_seconds()
            )
        log.info("job_finished", job_id=job.id, pipeline=job.pipeline, state=state.value, **detail)

    async def refresh_budget(self, provider: str) -> None:
        """Re-read the provider's limits and our own counts from the ledger."""
        budget, adapter = self.budgets[provider], self.adapters[provider]
        kind = self.cfg.account_type(provider)  # `provider` is an account: clari-emea
        unbudgeted = kinds_of(kind, budgeted=False) if kind is not None else []
        in_flight = await self.ledger.in_flight_count(provider, exclude_kinds=unbudgeted)
        used = len(await self.ledger.quota_times(provider, utcnow() - QUOTA_WINDOW))
        token = budget.snapshot_token()  # submissions answered before the limits request leaves
        try:
            remote = await adapter.limits()
        except Exception as exc:  # limits are advisory: keep the old view, try again later
            log.warning("limits_refresh_failed", provider=provider, error=str(exc))
            budget.in_flight, budget.used = in_flight, used
            return
        if remote is None:
            budget.in_flight, budget.used = in_flight, used
            return
        budget.on_refresh(remote, in_flight=in_flight, used=used, token=token)
        log.debug(
            "limits_refreshed",
            provider=provider,
            free_slots=budget.free_slots(),
            free_quota=budget.free_quota(),
        )

    def retried(self, job: Job) -> None:
        self.stats.retries += 1
        self.metrics.retries.labels(job.provider).inc()

    def deadline_passed(self, job: Job) -> bool:
        return job.deadline_at is not None and utcnow() >= job.deadline_at

    def retry_at(self, attempts: int) -> timedelta:
        policy = RetryPolicy(base=self.cfg.daemon.retry_base, cap=self.cfg.daemon.retry_cap)
        return timedelta(seconds=retry_delay(policy, attempts, self.rng))
