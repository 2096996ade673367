"""The provider interface, read in one place, and the registry of job kinds.

An adapter speaks for one provider *account* (one base URL + credentials); every job kind of that
provider goes through it, so limits, sessions and batch polls are shared by all its pipelines.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict

from orchestrator.domain import ImportProgress, Job, Part, RemoteStatus
from orchestrator.errors import ProviderError, Rejected
from orchestrator.limits import ProviderLimits
from orchestrator.outputs import FileCommitter, result_path
from orchestrator.reconcile import NOT_CREATED, Lookup

if TYPE_CHECKING:
    from orchestrator.config import ProviderConfig
    from orchestrator.http import HttpClient
    from orchestrator.ledger.store import Ledger


class Params(BaseModel):
    """Base of every kind's params model: provider field names, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class OutcomeUnknown(ProviderError):
    """A spending call whose answer never came and whose outcome could not be looked up yet:
    the job waits without spending an attempt; the next run looks again before any new call."""

    retryable = True


class Sink(Protocol):
    async def write(self, data: bytes) -> None: ...


class ProviderAdapter(Protocol):
    name: str
    batch_poll: bool  # one call answers for every in-flight job of the account
    http: HttpClient  # the account's client: its pace (rate windows, pause) is every client's

    async def limits(self) -> ProviderLimits | None:
        """The provider's own view of concurrency and quota, if it publishes one."""
        ...

    async def submit(self, job: Job) -> str:
        """Create one remote job and return its id. Raises QuotaExceeded/Throttled/Rejected."""
        ...

    async def poll(self, remote_ids: Sequence[str]) -> dict[str, RemoteStatus]:
        """Status of each remote job (batched where the API allows)."""
        ...

    async def fetch(self, job: Job, sink: Sink) -> None:
        """Stream the job's result into `sink`."""
        ...

    async def cancel(self, job: Job) -> None: ...

    def ambiguity_class(self, job: Job) -> str | None:
        """Which of this account's submissions the provider's listing cannot tell apart from
        this job's (Clari: one export module). At most one submission per class is ever
        unresolved, so a lost answer is matched to a unique remote job. None: the job's
        submission is identified by a name we chose, or it makes no remote job of its own."""
        ...

    async def find(self, jobs: Sequence[Job], known_remote_ids: set[str]) -> dict[int, Lookup]:
        """After a lost answer or a crash: for each job caught in SUBMITTING, what it created
        (see Lookup). A job left out of the answer could not be decided now (ask again later)."""
        ...

    def result_extension(self, job: Job) -> str: ...

    async def check(self) -> dict[str, Any]:
        """Verify the credentials with the cheapest call; what it tells of limits or credits."""
        ...

    async def close(self) -> None: ...


@dataclass(kw_only=True)
class Work:
    """What a staged job's `run` may touch: its own parts in the ledger, the output directory,
    the daemon's stop signal. Everything else stays in the engine."""

    job: Job
    ledger: Ledger
    output_dir: Path
    committer: FileCommitter
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    now: Callable[[], datetime] = field(default=lambda: datetime.now().astimezone())

    async def parts(self) -> list[Part]:
        return await self.ledger.parts(self.job.id)

    async def save(self, *parts: Part) -> None:
        await self.ledger.save_parts(parts)

    async def parts_after(self, after_seq: int, limit: int) -> list[Part]:
        return await self.ledger.parts_after(self.job.id, after_seq, limit)

    async def import_progress(self) -> ImportProgress | None:
        return (await self.ledger.import_progress([self.job.id])).get(self.job.id)

    async def save_progress(self, progress: ImportProgress) -> None:
        await self.ledger.save_import_progress(progress)

    def result_path(self, ext: str) -> Path:
        return result_path(self.output_dir, self.job, ext)

    def scratch_dir(self) -> Path:
        """Where a job keeps its part files until they are stitched (hidden, per job)."""
        return self.output_dir / self.job.pipeline / f".job{self.job.id}.parts"

    def drop_scratch(self) -> None:
        """Remove the part files once the result holds them (blocking: call it from a thread)."""
        scratch = self.scratch_dir()
        for leftover in scratch.glob("*"):
            leftover.unlink(missing_ok=True)
        if scratch.exists():
            scratch.rmdir()

    def deadline_passed(self) -> bool:
        return self.job.deadline_at is not None and self.now() >= self.job.deadline_at

    async def enqueue_child(self, suffix: str, params: dict[str, Any]) -> int | None:
        """A new PENDING job of the same pipeline (fan-out), once per (this job, suffix)."""
        job = self.job
        return await self.ledger.enqueue(
            pipeline=job.pipeline,
            kind=job.kind,
            provider=job.provider,
            params=params,
            idempotency_key=f"{job.idempotency_key}:{suffix}",
            fire_time=job.fire_time,
            max_attempts=job.max_attempts,
            deadline_at=job.deadline_at,
            reason=f"expanded from job {job.id}",
        )


class StagedAdapter(ProviderAdapter, Protocol):
    async def run(self, job: Job, work: Work) -> dict[str, Any] | None:
        """Do the whole job (resuming from its parts). Returns the result row (path, bytes,
        sha256, rows), or None for a job that only fanned out into others. Raises
        Rejected/RemoteJobFailed (fail now) or another ProviderError (try again later: parts
        already DONE are kept)."""
        ...


# Expands one run of a pipeline into jobs: (idempotency key, params) per job. For imports, one
# job per new source file, keyed by the file's sha256, so a file is imported once.
class StagedAdapterBase:
    """The submit/poll/fetch half of the protocol for providers whose kinds are all staged: the
    engine never calls it (it calls `run`); limits and cancellation have nothing to act on."""

    name: str
    batch_poll = False

    async def limits(self) -> ProviderLimits | None:
        return None

    async def submit(self, job: Job) -> str:
        raise Rejected(self.name, f"{job.kind} runs in stages (adapter.run), not submitted")

    async def poll(self, remote_ids: Sequence[str]) -> dict[str, RemoteStatus]:
        return {}

    async def fetch(self, job: Job, sink: Sink) -> None:
        raise Rejected(self.name, f"{job.kind} runs in stages (adapter.run), not fetched")

    async def cancel(self, job: Job) -> None:
        return None  # nothing remote to withdraw: the worker stops making calls

    def ambiguity_class(self, job: Job) -> str | None:
        return None  # staged kinds reconcile their own calls, part by part, inside `run`

    async def find(self, jobs: Sequence[Job], known_remote_ids: set[str]) -> dict[int, Lookup]:
        return {job.id: NOT_CREATED for job in jobs}  # a staged SUBMITTING job sent nothing yet


def expand_list(list_key: str, item_key: str) -> Expander:
    """An expander for params that name several targets (`datasets = [...]`): one job per
    target, with `item_key` set to it and the list left out."""

    async def expand(
        _ledger: Ledger, _pipeline: str, params: dict[str, Any], key: str
    ) -> list[tuple[str, dict[str, Any]]]:
        if not params.get(list_key):
            return [(key, params)]
        base = {k: v for k, v in params.items() if k != list_key}
        return [(f"{key}:{item}", {**base, item_key: item}) for item in params[list_key]]

    return expand


# Called with (ledger, pipeline name, rendered params, the run's idempotency key).
Expander = Callable[
    ["Ledger", str, dict[str, Any], str], Awaitable[list[tuple[str, dict[str, Any]]]]
]


@dataclass(frozen=True, kw_only=True, slots=True)
class KindSpec:
    kind: str
    provider: str
    params_model: type[Params]
    description: str
    staged: bool = False  # run by the worker as one coroutine (adapter.run), not submit/poll/fetch
    expand: Expander | None = None
    budgeted: bool = True  # holds one of the account's concurrency slots while in flight
    uses_quota: bool = True  # counts against the account's rolling monthly quota


PROVIDERS: dict[str, Callable[[ProviderConfig], ProviderAdapter]] = {}
KINDS: dict[str, KindSpec] = {}
DEFAULT_BASE_URLS: dict[str, str] = {}


def register_provider(
    name: str, default_base_url: str
) -> Callable[[Callable[[ProviderConfig], Any]], Callable[[ProviderConfig], Any]]:
    def deco(factory: Callable[[ProviderConfig], Any]) -> Callable[[ProviderConfig], Any]:
        PROVIDERS[name] = factory
        DEFAULT_BASE_URLS[name] = default_base_url
        return factory

    return deco


def register_kind(
    kind: str,
    params_model: type[Params],
    description: str,
    *,
    staged: bool = False,
    expand: Expander | None = None,
    budgeted: bool = True,
    uses_quota: bool = True,
) -> None:
    provider = kind.split(".", 1)[0]
    KINDS[kind] = KindSpec(
        kind=kind,
        provider=provider,
        params_model=params_model,
        description=description,
        staged=staged,
        expand=expand,
        budgeted=budgeted,
        uses_quota=uses_quota,
    )


def kind_spec(kind: str) -> KindSpec:
    return KINDS[kind]


def adapter_factory(prov: ProviderConfig) -> Callable[[ProviderConfig], ProviderAdapter] | None:
    """The adapter of the account's provider type (config.account_type), None if it has none."""
    kind = prov.provider_type
    return None if kind is None else PROVIDERS.get(kind)


def kinds_of(provider: str, *, budgeted: bool | None = None) -> list[str]:
    """The kinds of one provider type (not an account name), optionally only those that do
    (budgeted=True) or do not (False) hold one of the account's slots."""
    return [
        k
        for k, spec in KINDS.items()
        if spec.provider == provider and (budgeted is None or spec.budgeted == budgeted)
    ]
