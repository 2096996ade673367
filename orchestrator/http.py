"""One aiohttp session per provider account: timeouts, a request-rate token bucket, retries on
429/5xx/connection errors honouring Retry-After and X-RateLimit-Reset, and error translation.

Nothing raised from here carries a credential: messages name the provider, method and path (never
the query string or headers) and the provider's own error code and message, redacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import structlog

from orchestrator.backoff import RetryPolicy, retry_delay
from orchestrator.errors import AuthFailed, ProviderError, Rejected, Throttled, Unavailable
from orchestrator.limits import SlidingWindowLimiter

if TYPE_CHECKING:
    from orchestrator.config import ProviderConfig

log = structlog.get_logger(__name__)
_debug_log = logging.getLogger(__name__)
MAX_WAIT = 300.0  # never sleep longer than this on one server-provided hint


_REQUEST_PREFIX = uuid.uuid4().hex[:8]
_request_counter = itertools.count(1)


def _next_request_id() -> str:
    """Unique per process run and cheap (uuid4 reads os.urandom on every call)."""
    return f"{_REQUEST_PREFIX}-{next(_request_counter):x}"


def loads_json(data: bytes) -> Any:
    """A response body as JSON (None when empty). orjson: a Clari job listing is megabytes and
    is read on every poll, and orjson parses it several times faster. Where orjson refuses
    something the standard parser takes (NaN), the standard parser decides. One difference
    remains: an integer beyond 64 bits becomes a float (no provider we speak sends one; their
    ids are strings or small numbers). Raises ValueError when it is not JSON."""
    if not data.strip():
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def redact(text: str, secrets: list[str]) -> str:
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "***")
    return text


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from Retry-After (seconds or HTTP date) or X-RateLimit-Reset (epoch
    seconds, epoch milliseconds, or seconds from now)."""
    now = time.time() if now is None else now
    value = headers.get("Retry-After")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            with contextlib.suppress(TypeError, ValueError):
                return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    value = headers.get("X-RateLimit-Reset")
    if value:
        try:
            reset = float(value)
        except ValueError:
            return None
        if reset > 1e12:  # epoch milliseconds
            reset /= 1000.0
        if reset > 1e9:  # epoch seconds
            return max(0.0, reset - now)
        return max(0.0, reset)
    return None


def error_fields(body: Any) -> tuple[str | None, str]:
    """(code, message) from the error body shapes our providers use."""
    if isinstance(body, list) and body and isinstance(body[0], dict):  # Clari ingest: [{..}]
        first = body[0]
        code = first.get("errorCode") or first.get("code")
        msg = "; ".join(
            str(e.get("errorSummary") or e.get("message") or "")
            for e in body
            if isinstance(e, dict)
        )
        return (str(code) if code else None), msg
    if isinstance(body, dict):
        if isinstance(body.get("errors"), list) and body["errors"]:
            first = body["errors"][0]
            if isinstance(first, dict):
                return first.get("code"), str(first.get("message") or first.get("details") or "")
        if isinstance(body.get("error"), dict):
            err = body["error"]
            return err.get("code"), str(err.get("message") or "")
        code = body.get("code") or body.get("error")
        msg = body.get("message") or body.get("detail") or body.get("error_description") or ""
        return (str(code) if code is not None else None), str(msg)
    if isinstance(body, str):
        return None, body[:300]
    return None, ""


class HttpClient:
    def __init__(
        self,
        provider: str,
        base_url: str,
        *,
        headers: dict[str, str],
        secrets: list[str],
        timeout: float = 30.0,
        retries: int = 5,
        retry_base: float = 0.5,
        requests_per_second: float = 10.0,
        requests_per_minute: float | None = None,
        throttle_retries: int | None = None,
    ) -> None:
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self._headers = headers
        self._secrets = secrets
        self._timeout = aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=timeout)
        self.retries = retries
        self.throttle_retries = retries if throttle_retries is None else throttle_retries
        self.retry_policy = RetryPolicy(base=retry_base, cap=30.0)
        self.limiter = SlidingWindowLimiter(requests_per_second)
        self.minute_limiter = (
            SlidingWindowLimiter(requests_per_minute / 60.0, period=60.0)
            if requests_per_minute
            else None
        )
        self._paused_until = 0.0  # the server said X-RateLimit-Remaining: 0 until its reset
        self._session: aiohttp.ClientSession | None = None
        self._rng = random.Random()
        self.requests = 0
        self.status_counts: dict[int, int] = {}

    @classmethod
    def for_provider(
        cls,
        cfg: ProviderConfig,
        name: str,
        *,
        headers: dict[str, str],
        base_url: str | None = None,
        **overrides: Any,
    ) -> HttpClient:
        """A client with the account's settings (timeout, retries, rates, secrets to redact);
        `overrides` replace any of them (e.g. retries=0 for calls that must not repeat)."""
        settings: dict[str, Any] = {
            "secrets": cfg.secrets(),
            "timeout": cfg.timeout,
            "retries": cfg.retries,
            "retry_base": cfg.retry_base,
            "requests_per_second": cfg.requests_per_second,
            "requests_per_minute": cfg.requests_per_minute,
        }
        settings.update(overrides)
        return cls(name, base_url or cfg.base_url, headers=headers, **settings)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=100),
                raise_for_status=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else self.base_url + path

    def _where(self, method: str, path: str) -> str:
        return f"{method} {urlsplit(self.url(path)).path}"

    def _fail(self, exc_type: type[ProviderError], msg: str, **kw: Any) -> ProviderError:
        return exc_type(self.provider, redact(msg, self._secrets), **kw)

    async def _sleep_before_retry(self, attempt: int, hint: float | None) -> None:
        delay = retry_delay(self.retry_policy, attempt, self._rng)
        if hint is not None:
            delay = max(delay, min(hint, MAX_WAIT))
        await asyncio.sleep(delay)

    async def _pace(self) -> None:
        """Wait for our own request-rate windows and for a server-announced reset."""
        if (wait := self._paused_until - time.monotonic()) > 0:
            log.info("rate_limit_pause", provider=self.provider, seconds=round(wait, 2))
            await asyncio.sleep(wait)
        if self.minute_limiter is not None:
            await self.minute_limiter.acquire()
        await self.limiter.acquire()

    def _note_remaining(self, headers: Mapping[str, str]) -> None:
        """Slow down before a 429: when the server says no request is left in its window, hold
        every request until the window resets."""
        remaining = headers.get("X-RateLimit-Remaining")
        if remaining is None:
            return
        try:
            left = int(float(remaining))
        except ValueError:
            return
        if left > 0:
            return
        reset = retry_after_seconds({"X-RateLimit-Reset": headers.get("X-RateLimit-Reset", "")})
        if reset is not None:
            self._paused_until = max(self._paused_until, time.monotonic() + min(reset, MAX_WAIT))

    @contextlib.asynccontextmanager
    async def open(
        self, method: str, path: str, *, label: str | None = None, **kw: Any
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A response with a 2xx status, after retries; its body is not read yet (stream it).
        `label` names the request in messages and logs instead of its path (pre-signed download
        URLs are credentials: their path must not be logged either)."""

        def where() -> str:  # for messages: path only, never query or headers (built on demand)
            return f"{method} {label}" if label else self._where(method, path)

        extra_headers = kw.pop("headers", None) or {}
        attempt = 0
        while True:
            attempt += 1
            await self._pace()
            self.requests += 1
            try:
                request_id = _next_request_id()
                headers = {**extra_headers, "X-Request-Id": request_id}
                resp = await self.session.request(method, self.url(path), headers=headers, **kw)
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = self._fail(Unavailable, f"{where()}: {type(exc).__name__}")
                log.warning(
                    "http_retry",
                    where=where(),
                    error=type(exc).__name__,
                    attempt=attempt,
                    request_id=request_id,
                )
                if attempt > self.retries:
                    raise last from None
                await self._sleep_before_retry(attempt, None)
                continue
            self.status_counts[resp.status] = self.status_counts.get(resp.status, 0) + 1
            self._note_remaining(resp.headers)
            if _debug_log.isEnabledFor(logging.DEBUG):  # a filtered structlog call costs ~5 µs
                log.debug("http_response", where=where(), status=resp.status, request_id=request_id)
            if resp.status < 400:
                try:
                    yield resp
                except (aiohttp.ClientError, TimeoutError) as exc:  # the body broke off mid-way
                    raise self._fail(
                        Unavailable, f"{where()}: body interrupted ({type(exc).__name__})"
                    ) from None
                finally:
                    resp.release()
                return
            body = await self._read_error_body(resp)
            resp.release()
            code, message = error_fields(body)
            if resp.status == 429 or resp.status >= 500:
                hint = retry_after_seconds(resp.headers)
                cls: type[ProviderError] = Throttled if resp.status == 429 else Unavailable
                last = self._fail(
                    cls, f"{where()}: {message or 'no detail'}", code=code, status=resp.status
                )
                if isinstance(last, Throttled):
                    last.retry_after = hint
                last.body = body  # some 5xx answers carry data (Clari ingest: status FAILED)
                log.warning(
                    "http_retry",
                    where=where(),
                    status=resp.status,
                    attempt=attempt,
                    request_id=resp.headers.get("X-Request-Id", request_id),
                )
                # A 429 created nothing, so it may be retried even where a lost 5xx may not.
                limit = self.throttle_retries if resp.status == 429 else self.retries
                if attempt > limit:
                    raise last
                await self._sleep_before_retry(attempt, hint)
                continue
            exc_type = AuthFailed if resp.status in (401, 403) else Rejected
            failure = self._fail(
                exc_type, f"{where()}: {message or resp.reason}", code=code, status=resp.status
            )
            failure.body = body  # for callers whose 4xx answers carry data (Clari ingest status)
            raise failure

    async def _read_error_body(self, resp: aiohttp.ClientResponse) -> Any:
        try:
            text = await resp.text()
        except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
            return None
        try:
            return json.loads(text)
        except ValueError:
            return text

    async def json(self, method: str, path: str, **kw: Any) -> Any:
        async with self.open(method, path, **kw) as resp:
            try:
                return loads_json(await resp.read())
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise self._fail(
                    Unavailable, f"{self._where(method, path)}: {type(exc).__name__}"
                ) from None
            except ValueError:
                raise self._fail(
                    Unavailable, f"{self._where(method, path)}: response is not JSON"
                ) from None
