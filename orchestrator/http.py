"""One aiohttp session per provider account: timeouts, the request-rate windows, retries on
429/5xx/connection errors, and error translation. Every answer is untrusted:

- Credentials go only to the configured origin: redirects are never followed (a 3xx is a
  BadAnswer for that call), and a URL handed out by the provider (a download URL) is fetched only
  by a client without credentials, over https unless it is loopback.
- Each request has a total deadline, body included (`request_deadline`, `download_deadline`);
  JSON answers are read up to `max_answer_bytes`, error bodies up to `max_error_bytes`; JSON
  nested too deep is a BadAnswer, never a RecursionError.
- 5xx and dropped connections back off with retry_base/retry_cap (or a Retry-After), whatever
  the rate-limit headers say while requests remain; a 429 or `X-RateLimit-Remaining: 0` pauses
  every request of the account (AccountPace) until the reset.

Nothing raised from here carries a credential: messages name the provider, method and path (never
the query string or headers) and the provider's own error code and message, redacted in every
encoding (orchestrator/redaction.py).
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
from collections.abc import AsyncIterator, Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import structlog

from orchestrator.backoff import RetryPolicy, retry_delay
from orchestrator.errors import (
    AuthFailed,
    BadAnswer,
    ProviderError,
    Rejected,
    Throttled,
    Unavailable,
)
from orchestrator.limits import AccountPace
from orchestrator.redaction import Redactor, register

if TYPE_CHECKING:
    from orchestrator.config import ProviderConfig

log = structlog.get_logger(__name__)
_debug_log = logging.getLogger(__name__)
MAX_WAIT = 300.0  # never sleep longer than this on one server-provided hint
RESET_MARGIN = 0.05  # seconds added to a server's reset: its clock and ours differ a little


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
    ids are strings or small numbers). Raises ValueError when it is not JSON, and for JSON
    nested deeper than orjson's 1,024 levels (the standard parser would raise RecursionError,
    which no caller expects: `[[[…]]]` of 200 KB stopped the daemon)."""
    if not data.strip():
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if b"NaN" not in data and b"Infinity" not in data:
            raise ValueError(str(exc)) from None
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deep") from None


def redact(text: str, secrets: list[str]) -> str:
    """`text` with each of `secrets` masked in every encoding (see orchestrator/redaction.py)."""
    return Redactor(secrets).redact(text)


_LOOPBACK = {"localhost", "127.0.0.1", "::1", "[::1]"}


def is_loopback(host: str | None) -> bool:
    return bool(host) and (host in _LOOPBACK or str(host).startswith("127."))


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def _credential_header(name: str) -> bool:
    return name.lower() not in ("accept", "content-type", "user-agent", "accept-encoding")


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


def safe_error_fields(body: Any) -> tuple[str | None, str]:
    """error_fields on a body of any shape: codes and messages as short strings, never raising."""
    try:
        code, message = error_fields(body)
    except (AttributeError, TypeError, ValueError, RecursionError):
        return None, ""
    code_text = None if code is None else str(code)[:200]
    return code_text, str(message)[:2000]


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
        retry_cap: float = 30.0,
        requests_per_second: float = 10.0,
        requests_per_minute: float | None = None,
        throttle_retries: int | None = None,
        request_deadline: float = 120.0,
        download_deadline: float = 6 * 3600.0,
        max_answer_bytes: int = 16 * 1024 * 1024,
        max_error_bytes: int = 64 * 1024,
        pace: AccountPace | None = None,
        rate_group: str | None = None,
    ) -> None:
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self._origin = origin(self.base_url)
        self._headers = headers
        self.credentials = any(_credential_header(h) for h in headers)
        register(secrets)  # exceptions and log lines anywhere are redacted from now on
        self._timeout = aiohttp.ClientTimeout(
            total=request_deadline, connect=timeout, sock_read=timeout
        )
        self._download_timeout = aiohttp.ClientTimeout(
            total=download_deadline, connect=timeout, sock_read=timeout
        )
        self.max_answer_bytes = max_answer_bytes
        self.max_error_bytes = max_error_bytes
        self.retries = retries
        self.throttle_retries = retries if throttle_retries is None else throttle_retries
        self.retry_policy = RetryPolicy(base=retry_base, cap=retry_cap)
        self.pace = pace if pace is not None else AccountPace()
        self.limiter, self.minute_limiter = self.pace.windows(
            rate_group or self.base_url, requests_per_second, requests_per_minute
        )
        self._session: aiohttp.ClientSession | None = None
        self._rng = random.Random()
        self.requests = 0
        self.status_counts: dict[int, int] = {}
        self.last_rate_limit: str | None = None  # X-RateLimit-Limit of the last answer

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
        """A client with the account's settings (timeouts, caps, retries, rates, secrets to
        redact); `overrides` replace any of them (e.g. retries=0 for calls that must not repeat).
        Pass the account's `pace=` to every client of one account: they share its pause and,
        per `rate_group` (default: the base URL), its request-rate windows."""
        settings: dict[str, Any] = {
            "secrets": cfg.secrets(),
            "timeout": cfg.timeout,
            "retries": cfg.retries,
            "retry_base": cfg.retry_base,
            "retry_cap": cfg.retry_cap,
            "requests_per_second": cfg.requests_per_second,
            "requests_per_minute": cfg.requests_per_minute,
            "request_deadline": cfg.request_deadline,
            "download_deadline": cfg.download_deadline,
            "max_answer_bytes": cfg.max_answer_bytes,
            "max_error_bytes": cfg.max_error_bytes,
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
        """An absolute URL (any scheme: _check_target judges it) as it is; a path under base."""
        parts = urlsplit(path)
        return path if parts.scheme and parts.netloc else self.base_url + path

    def _where(self, method: str, path: str) -> str:
        try:
            return f"{method} {urlsplit(self.url(path)).path}"
        except ValueError:  # brackets that do not close, and the like
            return f"{method} (an unusable URL)"

    def endpoint(self, method: str, path: str) -> str:
        """`METHOD /path` for messages: never the query string, never another host."""
        return self._where(method, path)

    def _fail(self, exc_type: type[ProviderError], msg: str, **kw: Any) -> ProviderError:
        return exc_type(self.provider, msg, **kw)

    def _check_target(self, url: str, where: str) -> None:
        """Credentials only to the configured origin; a URL from elsewhere (handed out by the
        provider) only over https unless loopback, and only by a client without credentials."""
        try:
            target = origin(url)
        except ValueError:  # a port out of range, brackets that do not close
            raise BadAnswer(self.provider, f"{where}: unusable URL") from None
        if target == self._origin:
            return
        if self.credentials:
            raise BadAnswer(
                self.provider, f"{where}: refusing to send credentials to another origin"
            )
        if target[0] != "https" and not (target[0] == "http" and is_loopback(target[1])):
            raise BadAnswer(self.provider, f"{where}: URL is not https ({target[0] or 'none'})")

    async def _sleep_before_retry(self, attempt: int, hint: float | None) -> None:
        delay = retry_delay(self.retry_policy, attempt, self._rng)
        if hint is not None:
            delay = max(delay, min(hint, MAX_WAIT))
        await asyncio.sleep(delay)

    async def _pace(self) -> None:
        """Wait for the account's pause and our request-rate windows. The pause is checked again
        once a window has room: an answer that arrived meanwhile may have set one."""
        while True:
            if (wait := self.pace.paused_for()) > 0:
                log.info("rate_limit_pause", provider=self.provider, seconds=round(wait, 2))
                await asyncio.sleep(wait)
            if self.minute_limiter is not None:
                await self.minute_limiter.acquire()
            try:
                await self.limiter.acquire()
            except BaseException:  # cancelled while waiting: give the minute's room back
                if self.minute_limiter is not None:
                    self.minute_limiter.release()
                raise
            if self.pace.paused_for() <= 0:
                return
            self._release_windows()  # counted, not sent: conservative, and rare

    def _release_windows(self) -> None:
        self.pace.called()
        self.limiter.release()
        if self.minute_limiter is not None:
            self.minute_limiter.release()

    def _note_remaining(self, headers: Mapping[str, str]) -> None:
        """When the server says no request is left in its window, hold every request of the
        account until the window resets (a later answer with more left never lifts it)."""
        remaining = headers.get("X-RateLimit-Remaining")
        if remaining is None:
            return
        try:
            left = int(float(remaining))
        except (ValueError, OverflowError):
            return
        if left > 0:
            return
        reset = retry_after_seconds({"X-RateLimit-Reset": headers.get("X-RateLimit-Reset", "")})
        if reset is not None:
            self.pace.pause(min(reset, MAX_WAIT) + RESET_MARGIN)

    @contextlib.asynccontextmanager
    async def open(
        self,
        method: str,
        path: str,
        *,
        label: str | None = None,
        download: bool = False,
        body: Callable[[], Any] | None = None,
        **kw: Any,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A response with a 2xx status, after retries; its body is not read yet (stream it).
        `label` names the request in messages and logs instead of its path (pre-signed download
        URLs are credentials: their path must not be logged either). `download`: the body is a
        result, read within download_deadline instead of request_deadline. `body`: a factory
        of the request's `data`, called for each attempt — a streamed body (a file in a form)
        is consumed by the attempt that sends it and cannot be sent again."""

        def where() -> str:  # for messages: path only, never query or headers (built on demand)
            return f"{method} {label}" if label else self._where(method, path)

        try:
            url = self.url(path)
        except ValueError:  # brackets that do not close, and the like
            raise self._fail(BadAnswer, f"{where()}: unusable URL") from None
        self._check_target(url, where())
        extra_headers = kw.pop("headers", None) or {}
        kw.pop("allow_redirects", None)
        kw.setdefault("timeout", self._download_timeout if download else self._timeout)
        attempt = 0
        while True:
            attempt += 1
            await self._pace()
            self.requests += 1
            request_id = _next_request_id()
            try:
                headers = {**extra_headers, "X-Request-Id": request_id}
                if body is not None:
                    kw["data"] = body()
                resp = await self.session.request(
                    method, url, headers=headers, allow_redirects=False, **kw
                )
            except BaseException as exc:
                self._release_windows()  # whatever happened, the window must not leak a place
                if isinstance(exc, aiohttp.InvalidURL) or (
                    isinstance(exc, ValueError | UnicodeError)
                    and not isinstance(exc, aiohttp.ClientError)
                ):  # a URL aiohttp cannot use (one handed out by the provider)
                    raise self._fail(BadAnswer, f"{where()}: unusable URL") from None
                if not isinstance(exc, aiohttp.ClientError | TimeoutError):
                    raise
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
            self._release_windows()
            self.status_counts[resp.status] = self.status_counts.get(resp.status, 0) + 1
            self._note_remaining(resp.headers)
            self.last_rate_limit = resp.headers.get("X-RateLimit-Limit", self.last_rate_limit)
            if _debug_log.isEnabledFor(logging.DEBUG):  # a filtered structlog call costs ~5 µs
                log.debug("http_response", where=where(), status=resp.status, request_id=request_id)
            if resp.status < 300:
                try:
                    yield resp
                except (aiohttp.ClientError, TimeoutError) as exc:  # the body broke off mid-way
                    raise self._fail(
                        Unavailable, f"{where()}: body interrupted ({type(exc).__name__})"
                    ) from None
                finally:
                    if resp.content.at_eof():
                        resp.release()  # the connection goes back to the pool
                    else:
                        resp.close()  # a body left unread is not drained (it may be 1 GiB)
                return
            if resp.status < 400:  # never followed: the credentials stay with their origin
                resp.close()
                raise self._fail(
                    BadAnswer,
                    f"{where()}: redirect refused (HTTP {resp.status}; credentials go only to "
                    "the configured origin)",
                    status=resp.status,
                )
            await self._answer_error(resp, attempt, where(), request_id)

    async def _answer_error(
        self, resp: aiohttp.ClientResponse, attempt: int, where: str, request_id: str
    ) -> None:
        """Raise the error a 4xx/5xx stands for, or sleep before the caller's next attempt."""
        body = await self._read_error_body(resp)
        code, message = safe_error_fields(body)
        status = resp.status
        if status == 429 or status >= 500:
            if status == 429:  # Retry-After, else the window's reset: the whole account waits
                hint = retry_after_seconds(resp.headers)
            else:  # backoff, or the server's Retry-After; its rate-limit reset is not a hint
                hint = retry_after_seconds({"Retry-After": resp.headers.get("Retry-After", "")})
            cls: type[ProviderError] = Throttled if status == 429 else Unavailable
            last = self._fail(cls, f"{where}: {message or 'no detail'}", code=code, status=status)
            if isinstance(last, Throttled):
                last.retry_after = hint
            last.body = body  # some 5xx answers carry data (Clari ingest: status FAILED)
            log.warning(
                "http_retry",
                where=where,
                status=status,
                attempt=attempt,
                request_id=resp.headers.get("X-Request-Id", request_id)[:100],
            )
            # A 429 created nothing, so it may be retried even where a lost 5xx may not.
            limit = self.throttle_retries if status == 429 else self.retries
            if status == 429:
                delay = retry_delay(self.retry_policy, attempt, self._rng)
                self.pace.pause(min(MAX_WAIT, hint if hint is not None else delay) + RESET_MARGIN)
            if attempt > limit:
                raise last
            await self._sleep_before_retry(attempt, hint)
            return
        exc_type = AuthFailed if status in (401, 403) else Rejected
        failure = self._fail(
            exc_type, f"{where}: {message or resp.reason or ''}", code=code, status=status
        )
        failure.body = body  # for callers whose 4xx answers carry data (Clari ingest status)
        raise failure

    async def _read_capped(self, resp: aiohttp.ClientResponse, cap: int) -> tuple[bytes, bool]:
        """Up to `cap` bytes of the body, and whether there was more (then the connection is
        closed rather than drained)."""
        if resp.content_length is not None and resp.content_length > cap:
            return b"", True
        chunks: list[bytes] = []
        size = 0
        while size <= cap:
            chunk = await resp.content.read(min(1 << 16, cap + 1 - size))
            if not chunk:
                return b"".join(chunks), False
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)[:cap], True

    async def _read_error_body(self, resp: aiohttp.ClientResponse) -> Any:
        try:
            data, more = await self._read_capped(resp, self.max_error_bytes)
        except (aiohttp.ClientError, TimeoutError):
            resp.close()
            return None
        if more:
            resp.close()
        else:
            resp.release()
        try:
            return loads_json(data) if not more else None
        except ValueError:
            return data.decode("utf-8", "replace")[:2000]

    async def json(self, method: str, path: str, **kw: Any) -> Any:
        """The JSON answer (None when empty), read within the deadline and the size cap. Not
        JSON, too deep, too big, too slow: BadAnswer."""
        where = self._where(method, path)
        async with self.open(method, path, **kw) as resp:
            try:
                data, more = await self._read_capped(resp, self.max_answer_bytes)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise self._fail(
                    BadAnswer, f"{where}: body not read ({type(exc).__name__})"
                ) from None
            if more:
                raise self._fail(
                    BadAnswer, f"{where}: answer larger than {self.max_answer_bytes} bytes"
                )
            try:
                return loads_json(data)
            except ValueError:
                raise self._fail(BadAnswer, f"{where}: response is not JSON") from None
