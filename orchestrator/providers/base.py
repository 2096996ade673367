"""The provider interface, read in one place, and the registry of job kinds.

An adapter speaks for one provider *account* (one base URL + credentials); every job kind of that
provider goes through it, so limits, sessions and batch polls are shared by all its pipelines.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict

from orchestrator.domain import Job, RemoteStatus
from orchestrator.limits import ProviderLimits

if TYPE_CHECKING:
    from orchestrator.config import ProviderConfig


class Params(BaseModel):
    """Base of every kind's params model: provider field names, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Sink(Protocol):
    async def write(self, data: bytes) -> None: ...


class ProviderAdapter(Protocol):
    name: str
    batch_poll: bool  # one call answers for every in-flight job of the account

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

    async def find(self, jobs: Sequence[Job], known_remote_ids: set[str]) -> dict[int, str | None]:
        """After a crash: for each job caught in SUBMITTING, the remote id it created, or None if
        it provably created nothing. A job left out of the answer could not be decided."""
        ...

    def result_extension(self, job: Job) -> str: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class KindSpec:
    kind: str
    provider: str
    params_model: type[Params]
    description: str


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


def register_kind(kind: str, params_model: type[Params], description: str) -> None:
    provider = kind.split(".", 1)[0]
    KINDS[kind] = KindSpec(
        kind=kind, provider=provider, params_model=params_model, description=description
    )


def kind_spec(kind: str) -> KindSpec:
    return KINDS[kind]
