"""Our exceptions. HTTP statuses, aiohttp errors and providers' error bodies become these at the
boundary (http.py and the adapters), so retry policy is decided once, in the engine.

Messages never carry credentials: they name the provider, the method and path, and the provider's
own code and message.
"""

from __future__ import annotations


class OrchestratorError(Exception):
    pass


class ConfigError(OrchestratorError):
    """Bad configuration. `problems` are ready-to-print `file:line: message` strings."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class ProviderError(OrchestratorError):
    retryable = False
    body: object = None  # the provider's parsed error body, when there was one

    def __init__(
        self, provider: str, message: str, *, code: str | None = None, status: int | None = None
    ) -> None:
        self.provider, self.code, self.status, self.message = provider, code, status, message
        prefix = f"{provider}: "
        if status is not None:
            prefix += f"HTTP {status} "
        if code:
            prefix += f"[{code}] "
        super().__init__(prefix + message)


class Throttled(ProviderError):
    """429 or equivalent that outlived the HTTP layer's own retries."""

    retryable = True

    def __init__(
        self,
        provider: str,
        message: str,
        *,
        retry_after: float | None = None,
        code: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(provider, message, code=code, status=status)
        self.retry_after = retry_after


class QuotaExceeded(ProviderError):
    """The provider refused because a quota or concurrency limit is reached. Nothing was created;
    the job goes back to PENDING without spending an attempt."""

    retryable = True


class Unavailable(ProviderError):
    """5xx, timeouts, dropped connections, after the HTTP layer's retries."""

    retryable = True


class Rejected(ProviderError):
    """4xx the provider will keep answering: bad params, permissions, unknown ids."""


class AuthFailed(Rejected):
    pass


class RemoteJobFailed(ProviderError):
    """The remote job ended FAILED/ABORTED/CANCELLED on the provider's side."""

    retryable = True
