"""Clayva API simulator (api-docs/clayva-api.txt): bearer keys, `POST /events/track` and
`POST /events/batch` (at most 1,000 events), the documented error shape
`{success: false, error: {code, message, details}}`, per-minute limits by endpoint category with
X-RateLimit-* headers and 429 RATE_LIMITED. Misbehaves on request: shared Faults, and batches
accepted and then the connection dropped (the client cannot know they landed)."""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web

from orchestrator.simulator.faults import (
    Faults,
    RateWindow,
    add_request_log,
    apply_sim_config,
    bearer,
    drop,
    make_middleware,
)

MAX_BATCH = 1000
TIER_LIMITS = {  # per minute: (event tracking, batch events)
    "free": (100, 10),
    "pro": (1000, 100),
}


def _err(status: int, code: str, message: str, details: Any = None) -> web.Response:
    body: dict[str, Any] = {"success": False, "error": {"code": code, "message": message}}
    if details is not None:
        body["error"]["details"] = details
    return web.json_response(body, status=status)


def validate_event(e: Any) -> dict[str, Any] | None:
    """The API's own checks of one event; None when it is fine."""
    if not isinstance(e, dict):
        return {"field": None, "problem": "event must be an object"}
    if not isinstance(e.get("event"), str) or not e["event"].strip():
        return {"field": "event", "provided": e.get("event"), "problem": "empty event name"}
    if not e.get("userId") and not e.get("anonymousId"):
        return {"field": "userId", "problem": "userId or anonymousId is required"}
    ts = e.get("timestamp")
    if ts is not None:
        try:
            datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
        except ValueError:
            return {"field": "timestamp", "provided": ts, "problem": "not ISO 8601"}
    if e.get("properties") is not None and not isinstance(e["properties"], dict):
        return {"field": "properties", "problem": "properties must be an object"}
    return None


@dataclass(kw_only=True)
class ClayvaSimConfig:
    api_key: str | None = None
    tier: str = "pro"
    window: float = 60.0  # seconds of the per-minute windows
    batch_limit: int | None = None  # None: the tier's
    track_limit: int | None = None
    lost_answer_rate: float = 0.0


@dataclass(kw_only=True)
class ClayvaState:
    events: list[dict[str, Any]] = field(default_factory=list)
    keys: Counter[str] = field(default_factory=Counter)


class ClayvaSimulator:
    def __init__(self, config: ClayvaSimConfig | None = None, faults: Faults | None = None) -> None:
        self.config = config or ClayvaSimConfig()
        self.faults = faults or Faults()
        self.state = ClayvaState()
        self._ids = itertools.count(1)
        self._windows = {name: RateWindow() for name in ("batch", "track", "admin")}
        self.stats: dict[str, int] = {
            "batches": 0,
            "events": 0,
            "rejected": 0,
            "rate_limited": 0,
            "max_batches_in_window": 0,
        }

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._gate, make_middleware(self.faults, error_body=self._fault_body)]
        )
        app.router.add_post("/events/track", self.track)
        app.router.add_post("/events/batch", self.batch)
        app.router.add_get("/workspaces", self.workspaces)
        app.router.add_get("/_sim/stats", self.sim_stats)
        add_request_log(app, self.faults)
        app.router.add_post("/_sim/config", self.sim_config)
        return app

    @staticmethod
    def _fault_body(status: int) -> dict[str, Any]:
        if status == 429:
            return {"success": False, "error": {"code": "RATE_LIMITED", "message": "Too many"}}
        return {"success": False, "error": {"code": "SERVER_ERROR", "message": "Server error"}}

    def _limit(self, category: str) -> int:
        track, batch = TIER_LIMITS.get(self.config.tier, TIER_LIMITS["free"])
        if category == "admin":
            return 50 if self.config.tier == "pro" else 5
        if category == "batch":
            return self.config.batch_limit or batch
        return self.config.track_limit or track

    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if "/_sim/" in request.path:
            answer: web.StreamResponse = await handler(request)
            return answer
        key = bearer(request)
        if not key or (self.config.api_key is not None and key != self.config.api_key):
            return _err(401, "UNAUTHORIZED", "Invalid or missing API key")
        category = (
            "batch"
            if request.path.endswith("/batch")
            else "admin"
            if "/workspaces" in request.path
            else "track"
        )
        used = self._windows[category]
        fits, headers = used.take(time.time(), self._limit(category), self.config.window)
        if not fits:
            self.stats["rate_limited"] += 1
            resp = _err(429, "RATE_LIMITED", "Too many requests")
            resp.headers.update(headers)
            return resp
        if category == "batch":
            self.stats["max_batches_in_window"] = max(
                self.stats["max_batches_in_window"], len(used.times)
            )
        out: web.StreamResponse = await handler(request)
        out.headers.update(headers)
        return out

    def _store(self, e: dict[str, Any]) -> dict[str, Any]:
        key = json.dumps(
            [
                e.get("event"),
                e.get("userId"),
                e.get("anonymousId"),
                e.get("timestamp"),
                e.get("properties"),
            ],
            sort_keys=True,
        )
        self.state.keys[key] += 1
        stored = {**e, "eventId": f"evt_{next(self._ids):012d}"}
        self.state.events.append(stored)
        return stored

    async def track(self, request: web.Request) -> web.Response:
        try:
            e = await request.json()
        except ValueError:
            return _err(400, "INVALID_REQUEST", "Body must be JSON")
        if (problem := validate_event(e)) is not None:
            self.stats["rejected"] += 1
            code = "INVALID_EVENT_NAME" if problem.get("field") == "event" else "INVALID_REQUEST"
            return _err(400, code, problem["problem"], problem)
        self.stats["events"] += 1
        return web.json_response({"success": True, "data": self._store(e)})

    async def batch(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return _err(400, "INVALID_REQUEST", "Body must be JSON")
        events = body.get("events") if isinstance(body, dict) else None
        if not isinstance(events, list) or not events:
            return _err(400, "INVALID_REQUEST", "events must be a non-empty array")
        if len(events) > MAX_BATCH:
            self.stats["rejected"] += 1
            return _err(400, "INVALID_REQUEST", f"Maximum {MAX_BATCH} events per batch")
        for i, e in enumerate(events):
            if (problem := validate_event(e)) is not None:
                self.stats["rejected"] += 1
                return _err(400, "INVALID_REQUEST", f"events[{i}]: {problem['problem']}", problem)
        for e in events:
            self._store(e)
        self.stats["batches"] += 1
        self.stats["events"] += len(events)
        if self.faults.roll(self.config.lost_answer_rate):
            self.faults.counts["lost_answer"] += 1
            return drop(request)
        return web.json_response(
            {"success": True, "data": {"accepted": len(events), "rejected": 0}}
        )

    async def workspaces(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"success": True, "data": [{"id": "ws_1", "name": "Production", "role": "admin"}]}
        )

    async def sim_stats(self, request: web.Request) -> web.Response:
        dupes = sum(n - 1 for n in self.state.keys.values() if n > 1)
        return web.json_response(
            {**self.stats, "duplicates": dupes, "faults": dict(self.faults.counts)}
        )

    async def sim_config(self, request: web.Request) -> web.Response:
        return await apply_sim_config(request, self.config, self.faults)
