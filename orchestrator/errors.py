"""Our exceptions. HTTP statuses, aiohttp errors and providers' error bodies become these at the
boundary (http.py and the adapters), so retry policy is decided once, in the engine.

Messages never carry credentials: they name the provider, the method and path, and the provider's
own code and message, and every one of those is redacted here (orchestrator/redaction.py), in each
encoding a provider might echo a key in, whoever raises the error.
"""

from __future__ import annotations

from typing import Any

from orchestrator.redaction import redact, redact_any


class OrchestratorError(Exception):
    pass


class ConfigError(OrchestratorError):
    """Bad configuration. `problems` are ready-to-print `file:line: message` strings."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class ProviderError(OrchestratorError):
    retryable = False
    _body: Any = None

    def __init__(
        self, provider: str, message: str, *, code: str | None = None, status: int | None = None
    ) -> None:
        message = redact(str(message))
        code = None if code is None else redact(str(code))
        self.provider, self.code, self.status, self.message = provider, code, status, message
        prefix = f"{provider}: "
        if status is not None:
            prefix += f"HTTP {status} "
        if code:
            prefix += f"[{code}] "
        super().__init__(prefix + message)

    @property
    def body(self) -> Any:
        """The provider's parsed error body, when there was one (redacted)."""
        return self._body

    @body.setter
    def body(self, value: Any) -> None:
        self._body = redact_any(value)


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


class BadAnswer(Unavailable):
    """An answer the daemon cannot act on: not JSON, nested too deep, over its size cap, missing
    a field or holding one of the wrong type, a redirect, or not finished within the request's
    deadline. Retryable: the job retries or fails by the usual rules (a provider that answers
    nonsense on every attempt fails the job after max_attempts), never an empty success."""


class Rejected(ProviderError):
    """4xx the provider will keep answering: bad params, permissions, unknown ids."""


class AuthFailed(Rejected):
    pass


class RemoteJobFailed(ProviderError):
    """The remote job ended FAILED/ABORTED/CANCELLED on the provider's side."""

    retryable = True
