"""Fault injection shared by every simulated provider: latency, 429 with reset headers, 5xx and
dropped connections, each at a configurable rate, changeable at run time via POST /_sim/config."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(kw_only=True)
class Faults:
    latency: float = 0.0  # seconds added to every answer
    rate_429: float = 0.0
    rate_5xx: float = 0.0
    drop_rate: float = 0.0  # close the connection without an answer
    retry_after: float = 0.2  # seconds announced with a 429
    seed: int | None = None
    counts: Counter[str] = field(default_factory=Counter)
    request_times: list[float] = field(default_factory=list)
    # Every request as the server saw it: (wall-clock arrival, path). GET /_sim/requests serves
    # it, so a test can check any one-second window of any group of endpoints against a rate.
    request_log: list[tuple[float, str]] = field(default_factory=list)
    rng: random.Random = field(default_factory=random.Random)

    def update(self, values: dict[str, Any]) -> list[str]:
        known = {f.name for f in fields(self)} - {"counts", "rng", "request_times", "request_log"}
        for key, value in values.items():
            if key in known:
                setattr(self, key, value)
        if "seed" in values and values["seed"] is not None:
            self.rng.seed(values["seed"])
        return sorted(set(values) - known)

    def max_per_second(self) -> int:
        """Most requests seen in any sliding one-second window."""
        return max_in_window(self.request_times)

    def roll(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate


@dataclass
class RateWindow:
    """One key's requests in a sliding window, and the X-RateLimit-* headers that go with an
    answer (Remaining 0 and the reset time when the window is full)."""

    times: list[float] = field(default_factory=list)

    def take(self, now: float, limit: int, window: float) -> tuple[bool, dict[str, str]]:
        """Count one request if it fits; (fits, headers)."""
        self.times = [t for t in self.times if now - t < window]
        reset = (self.times[0] if self.times else now) + window
        headers = {"X-RateLimit-Limit": str(limit), "X-RateLimit-Reset": str(math.ceil(reset))}
        if len(self.times) >= limit:
            headers["X-RateLimit-Remaining"] = "0"
            return False, headers
        self.times.append(now)
        headers["X-RateLimit-Remaining"] = str(limit - len(self.times))
        return True, headers


async def apply_sim_config(
    request: web.Request, config: Any, faults: Faults, exclude: frozenset[str] = frozenset()
) -> web.Response:
    """POST /_sim/config of any simulator: fields of its own config, else shared faults;
    answers with the keys neither knows."""
    values = await request.json()
    known = {f.name for f in fields(config)} - exclude
    for key, value in values.items():
        if key in known:
            setattr(config, key, value)
    unknown = faults.update({k: v for k, v in values.items() if k not in known})
    return web.json_response({"ignored": unknown})


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """Most of `times` (ascending) in any sliding window of `window` seconds."""
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def add_request_log(app: web.Application, faults: Faults) -> None:
    """GET /_sim/requests: every request the simulator answered (not its /_sim/ ones), as
    `[arrival, path]` pairs with the arrival in wall-clock seconds, the count of each whole
    second, and the most in any sliding one-second window."""

    async def requests(_: web.Request) -> web.Response:
        log = list(faults.request_log)
        per_second: Counter[int] = Counter(int(t) for t, _ in log)
        return web.json_response(
            {
                "requests": [[round(t, 6), path] for t, path in log],
                "per_second": {str(s): n for s, n in sorted(per_second.items())},
                "max_per_second": max_in_window([t for t, _ in log]),
            }
        )

    app.router.add_get("/_sim/requests", requests)


def bearer(request: web.Request) -> str:
    """The token of an `Authorization: Bearer …` header, or ''."""
    auth = request.headers.get("Authorization", "")
    return auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""


def drop(request: web.Request) -> web.Response:
    """Close the socket without answering (the client sees a disconnect)."""
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=500)


def make_middleware(faults: Faults, *, error_body: Callable[[int], dict[str, Any]]) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if "/_sim/" in request.path:
            return await handler(request)
        faults.counts["requests"] += 1
        faults.request_times.append(time.monotonic())
        faults.request_log.append((time.time(), request.path))
        if faults.latency:
            await asyncio.sleep(faults.latency)
        if faults.roll(faults.drop_rate):
            faults.counts["dropped"] += 1
            return drop(request)
        if faults.roll(faults.rate_429):
            faults.counts["429"] += 1
            reset = time.time() + faults.retry_after
            return web.json_response(
                error_body(429),
                status=429,
                headers={
                    "Retry-After": f"{faults.retry_after:g}",
                    "X-RateLimit-Limit": "100",
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": f"{reset:.3f}",
                },
            )
        if faults.roll(faults.rate_5xx):
            faults.counts["5xx"] += 1
            return web.json_response(error_body(500), status=500)
        return await handler(request)

    return middleware
