"""Per-provider-account admission arithmetic: concurrency slots and the rolling monthly quota.

Pure state: callers feed it what the ledger and the provider say, and ask whether one more
submission fits. The request *rate* is enforced by SlidingWindowLimiter (below) in the HTTP layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

QUOTA_WINDOW = timedelta(days=30)


def rolling_count(
    times: Iterable[datetime], now: datetime, window: timedelta = QUOTA_WINDOW
) -> int:
    """Submissions inside the rolling window (now - window, now]."""
    start = now - window
    return sum(1 for t in times if start < t <= now)


def next_release(
    times: Iterable[datetime], now: datetime, window: timedelta = QUOTA_WINDOW
) -> datetime | None:
    """When the oldest submission inside the window leaves it (frees one unit of quota)."""
    inside = [t for t in times if now - window < t <= now]
    return min(inside) + window if inside else None


@dataclass(frozen=True, kw_only=True, slots=True)
class ProviderLimits:
    """What the provider reported (Clari GET /admin/limits)."""

    concurrent_limit: int
    monthly_quota: int
    available_concurrent: int
    available_quota: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Caps:
    """The user's own caps from config (None = the provider's)."""

    concurrency: int | None = None
    monthly_quota: int | None = None
    reserve: int = 0  # quota units left for other users of the same org


@dataclass(kw_only=True, slots=True)
class AccountBudget:
    """Admission state of one provider account.

    `in_flight` are our jobs holding a remote slot (SUBMITTING/RUNNING); `used` our submissions in
    the rolling window. `remote` is the provider's last report (a snapshot); what we did after it
    is counted on top, so the provider's view is extrapolated between refreshes instead of
    trusted stale — and never counted twice:

    - a submission counts against the snapshot (`since_submitted`) unless its request was
      answered before the limits request left (then the snapshot holds it);
    - a slot released counts back (`since_released`) only for a job the snapshot provably
      counted as occupying: one submitted after it, or one a poll *sent after the snapshot was
      answered* still saw queued or running. A job that ended before the snapshot (typically
      while the daemon was down, seen DONE by the first poll after a restart) frees nothing:
      the snapshot already shows its slot free.

    Every doubt resolves toward fewer free slots; the next refresh corrects it.
    """

    caps: Caps
    in_flight: int = 0
    used: int = 0
    remote: ProviderLimits | None = None
    since_released: int = 0
    refreshed_at: float = field(default=float("-inf"))  # monotonic: the snapshot's answer
    _after: set[int] = field(default_factory=set)  # reserved and not in the snapshot
    _in_air: set[int] = field(default_factory=set)  # reserved, request not answered yet
    _seen: set[int] = field(default_factory=set)  # seen occupying by a poll after the snapshot
    _ended: set[int] = field(default_factory=set)  # of `_after`: released already

    @property
    def since_submitted(self) -> int:
        return len(self._after)

    def concurrency_limit(self) -> int | None:
        limits = [x for x in (self.caps.concurrency, self._remote_conc_limit()) if x is not None]
        return min(limits) if limits else None

    def _remote_conc_limit(self) -> int | None:
        return self.remote.concurrent_limit if self.remote else None

    def quota_limit(self) -> int | None:
        remote = self.remote.monthly_quota if self.remote else None
        limits = [x for x in (self.caps.monthly_quota, remote) if x is not None]
        return min(limits) if limits else None

    def free_slots(self) -> int | None:
        frees: list[int] = []
        if self.caps.concurrency is not None:
            frees.append(self.caps.concurrency - self.in_flight)
        if self.remote is not None:
            frees.append(
                self.remote.available_concurrent - self.since_submitted + self.since_released
            )
        return max(0, min(frees)) if frees else None

    def free_quota(self) -> int | None:
        frees: list[int] = []
        if self.caps.monthly_quota is not None:
            frees.append(self.caps.monthly_quota - self.used - self.caps.reserve)
        if self.remote is not None:
            frees.append(self.remote.available_quota - self.since_submitted - self.caps.reserve)
        return max(0, min(frees)) if frees else None

    def can_submit(self) -> bool:
        slots, quota = self.free_slots(), self.free_quota()
        return (slots is None or slots > 0) and (quota is None or quota > 0)

    def blocked_by(self) -> str | None:
        if self.free_slots() == 0:
            return "concurrency"
        if self.free_quota() == 0:
            return "quota"
        return None

    # --- events -----------------------------------------------------------------------------
    def on_reserve(self, job_id: int) -> None:
        """A submission is about to leave: it holds a slot and a quota unit from now on."""
        self.in_flight += 1
        self.used += 1
        self._after.add(job_id)
        self._in_air.add(job_id)

    def on_answered(self, job_id: int) -> None:
        """The submission's request came back (whatever it said): the provider has decided."""
        self._in_air.discard(job_id)

    def on_unreserve(self, job_id: int) -> None:
        """Nothing was created (refused, or provably never made): give both back."""
        self._in_air.discard(job_id)
        self._after.discard(job_id)
        self._ended.discard(job_id)
        self.in_flight = max(0, self.in_flight - 1)
        self.used = max(0, self.used - 1)

    def on_seen_active(self, job_id: int, sent_at: float) -> None:
        """A poll sent at monotonic `sent_at` saw the job queued or running at the provider."""
        if sent_at >= self.refreshed_at:
            self._seen.add(job_id)

    def on_slot_released(self, job_id: int) -> None:
        """A remote job left the provider's queue (done, failed, cancelled)."""
        self.in_flight = max(0, self.in_flight - 1)
        self._in_air.discard(job_id)
        if (job_id in self._after and job_id not in self._ended) or job_id in self._seen:
            self.since_released += 1
        if job_id in self._after:
            self._ended.add(job_id)  # its quota unit stays spent; its slot is back
        self._seen.discard(job_id)

    def snapshot_token(self) -> set[int]:
        """Call just before the limits request leaves; hand the result to on_refresh: the
        submissions already answered then are in the provider's snapshot."""
        return self._after - self._in_air

    def on_refresh(
        self,
        remote: ProviderLimits,
        *,
        in_flight: int,
        used: int,
        token: set[int] | None = None,
        now: float | None = None,
    ) -> None:
        self.remote = remote
        self.in_flight = in_flight
        self.used = used
        self._after -= self._after if token is None else token
        self._ended.clear()  # any left in `_after` count as occupying until the next refresh
        self.since_released = 0
        self._seen.clear()
        self.refreshed_at = time.monotonic() if now is None else now

    def on_provider_full(self) -> None:
        """The provider said 'quota or concurrency reached': trust it until the next refresh."""
        if self.remote is not None:
            self.remote = ProviderLimits(
                concurrent_limit=self.remote.concurrent_limit,
                monthly_quota=self.remote.monthly_quota,
                available_concurrent=0,
                available_quota=self.remote.available_quota,
            )
        else:
            self.remote = ProviderLimits(
                concurrent_limit=self.in_flight,
                monthly_quota=self.used,
                available_concurrent=0,
                available_quota=0,
            )
        # Submissions still in the air may land after the refusal: keep counting them.
        self._after &= self._in_air
        self._ended.clear()
        self.since_released = 0
        self._seen.clear()
        self.refreshed_at = time.monotonic()


class SlidingWindowLimiter:
    """At most `rate` requests in any `period` seconds, strictly, as the server counts them (a
    leaky bucket such as aiolimiter lets a full burst through on top of its steady rate, so a
    one-second window can see twice the rate).

    Callers `await acquire()` before a request and call `release()` once it has been answered
    (or failed). A request is counted from acquire() until `period` after its release: the server
    saw it somewhere in between, and when exactly is not known here. Stamping it at acquire()
    alone let a request that left late (the event loop busy on a loaded machine) meet the next
    window's requests at the server — one second measured 23 requests at 20/s."""

    def __init__(
        self, rate: float, period: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.capacity = max(1, int(rate * period))
        # A 2% margin for the server's clock resolution; the stamps themselves are conservative.
        self.period = period * 1.02
        self._clock = clock
        self._sent: deque[float] = deque()  # release times, ascending
        self._pending = 0  # acquired, not yet released: in flight, counted as sent "now"
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._queued = 0  # callers in the slow path (waiting for the lock or for room)

    def wait_time(self, now: float) -> float:
        """Seconds until one more request may fit (0 when it fits now; inf when only answers
        still outstanding hold the window). Pure given `now`."""
        while self._sent and now - self._sent[0] >= self.period:
            self._sent.popleft()
        if len(self._sent) + self._pending < self.capacity:
            return 0.0
        if self._sent:
            return self._sent[0] + self.period - now
        return math.inf

    async def acquire(self) -> None:
        if not self._queued:  # nobody ahead: take room at once, without the lock (hot path)
            if self.wait_time(self._clock()) == 0:
                self._pending += 1
                return
        self._queued += 1
        try:
            async with self._lock:
                while (wait := self.wait_time(self._clock())) > 0:
                    self._changed.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(None if math.isinf(wait) else wait):
                            await self._changed.wait()
                self._pending += 1
        finally:
            self._queued -= 1

    def release(self) -> None:
        """The request acquired last-but-not-yet-released has been answered (or has failed)."""
        self._pending = max(0, self._pending - 1)
        self._sent.append(self._clock())
        self._changed.set()


class AccountPace:
    """What every HTTP client of one provider account shares: the server's pause (after a 429
    or `X-RateLimit-Remaining: 0`, no request of the account leaves before the reset) and the
    request-rate windows, one per group of endpoints that the provider limits together."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.paused_until = 0.0
        self._clock = clock
        self.last_call: float | None = None  # when the account's last request was answered
        self._windows: dict[str, tuple[SlidingWindowLimiter, SlidingWindowLimiter | None]] = {}

    def pause(self, seconds: float) -> None:
        """Hold every request of the account for `seconds` from now (never shortened: an older
        or concurrent answer cannot lift a pause a newer one set)."""
        self.paused_until = max(self.paused_until, self._clock() + seconds)

    def called(self) -> None:
        self.last_call = self._clock()

    def idle_for(self) -> float | None:
        """Seconds since the account's last request ended here (None: none was made)."""
        return None if self.last_call is None else self._clock() - self.last_call

    def paused_for(self) -> float:
        return max(0.0, self.paused_until - self._clock())

    def window_periods(self) -> list[float]:
        """How long each of the account's rate windows remembers a request (a replica taking
        the account over waits out the longest, less the time since its last owner stopped)."""
        return [
            limiter.period
            for pair in self._windows.values()
            for limiter in pair
            if limiter is not None
        ]

    def binding_periods(self) -> list[float]:
        """The periods of the windows a takeover must wait out: every one-second window, and a
        per-minute window only where it binds. Once the old and the new owner's calls are a
        one-second window apart (the takeover's pause), no one-second window holds both, so
        together they stay within one owner's per-second pace; a minute window that pace
        cannot fill (capacity >= per-second capacity x (windows in a minute + 1)) cannot
        overflow, and waiting it out stalled the account for a minute after every takeover
        (a per-minute cap of 6,000 beside 10/s: the new owner paused 60 s)."""
        periods = []
        for second, minute in self._windows.values():
            periods.append(second.period)
            if minute is None:
                continue
            fits = second.capacity * (math.ceil(minute.period / second.period) + 1)
            if minute.capacity < fits:
                periods.append(minute.period)
        return periods

    def windows(
        self, group: str, per_second: float, per_minute: float | None
    ) -> tuple[SlidingWindowLimiter, SlidingWindowLimiter | None]:
        """The group's limiters (made by the first client that asks; later clients share them)."""
        if group not in self._windows:
            minute = (
                SlidingWindowLimiter(per_minute / 60.0, period=60.0, clock=self._clock)
                if per_minute
                else None
            )
            self._windows[group] = (
                SlidingWindowLimiter(per_second, clock=self._clock),
                minute,
            )
        return self._windows[group]
