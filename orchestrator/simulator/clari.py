"""Clari export API simulator, faithful to api-docs/clari-api-openapi.yaml.txt: status names
(SCHEDULED, STARTED, DONE, FAILED, CANCELLED, ABORTED), response and error bodies, the concurrent
limit (queued + running) and the rolling 30-day quota, cancel freeing quota, results only when
DONE, job expiry. Misbehaves on request (see Faults and ClariSimConfig)."""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import json
import math
import random
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from orchestrator.simulator.faults import (
    Faults,
    add_request_log,
    apply_sim_config,
    drop,
    make_middleware,
)

ACTIVE = ("SCHEDULED", "STARTED")
WINDOW = 30 * 86400.0
FORECAST_TYPES = {"forecast", "quota", "forecast_updated", "adjustment", "crm_total", "crm_closed"}
ACTIVITY_TYPES = {
    "MEETING",
    "EMAIL_SENT",
    "EMAIL_RECEIVED",
    "ATTACHMENT_SENT",
    "ATTACHMENT_RECEIVED",
}
BIG_LINE = b"rep,rep@example.com,0050001,Sales Rep,CEO,2026_Q4,Commit,1,x,y,Forecast Value,1\n"
FORECAST_HEADER = [
    "User",
    "Email",
    "CRM User ID",
    "Role",
    "Parent Role",
    "Timeframe",
    "Field",
    "Week",
    "Start Day",
    "End Day",
    "Data Type",
    "Data Value",
]


@dataclass(kw_only=True)
class ClariSimConfig:
    api_key: str | None = None  # None: any non-empty key is accepted
    concurrent_limit: int = 3
    monthly_quota: int = 1000
    queue_delay: float = 0.05  # seconds SCHEDULED before STARTED
    duration: float = 0.3  # median seconds STARTED before DONE
    duration_sigma: float = 0.0  # lognormal spread of durations (0 = fixed)
    fail_rate: float = 0.0  # jobs that end FAILED
    lost_submit_rate: float = 0.0  # create the job, then drop the connection before answering
    download_drop_rate: float = 0.0  # drop a results download half way
    result_rows: int = 50
    multiline_every: int = 0  # every Nth forecast row's Role holds a line break (quoted in CSV)
    result_bytes: int = 0  # when > 0, results are padded CSV of about this size (benchmarks)
    expire_after: float = 30 * 86400.0
    unknown_forecasts: list[str] = field(default_factory=lambda: ["no_such_forecast"])


@dataclass(kw_only=True)
class SimJob:
    job_id: str
    module: str
    title: str
    fmt: str
    created: float
    queue_delay: float
    duration: float
    fails: bool
    params: dict[str, Any]
    cancelled_at: float | None = None
    cancelled_status: str | None = None
    downloads: int = 0

    def status(self, now: float) -> str:
        if self.cancelled_status:
            return self.cancelled_status
        age = now - self.created
        if age < self.queue_delay:
            return "SCHEDULED"
        if age < self.queue_delay + self.duration:
            return "STARTED"
        return "FAILED" if self.fails else "DONE"

    def to_json(self, now: float, expire_after: float) -> dict[str, Any]:
        status = self.status(now)
        end = self.created + self.queue_delay + self.duration
        return {
            "jobId": self.job_id,
            "userId": 1,
            "orgId": 101,
            "title": self.title,
            "module": self.module,
            "startTime": int(self.created * 1000),
            "endTime": int(end * 1000) if status not in ACTIVE else None,
            "expiredTime": int((end + expire_after) * 1000),
            "version": 1,
            "fileName": f"clari_export_{self.module.lower()}_{self.job_id}.{self.fmt.lower()}",
            "fileType": self.fmt,
            "status": status,
            "viewed": self.downloads > 0,
            "cellsTruncated": False,
            "rowsTruncated": False,
            "downloads": self.downloads,
            "deliveryStatusMap": {},
            "currency": self.params.get("currency", "USD"),
        }


def _csv_field(value: str) -> str:
    if any(c in value for c in ',"\n\r'):
        return '"' + value.replace('"', '""') + '"'
    return value


def _err(code: str, message: str, namespace: str = "exports") -> dict[str, Any]:
    return {
        "code": code,
        "namespace": namespace,
        "errorId": str(uuid.uuid1()),
        "message": message,
        "orgId": 101,
    }


class ClariSimulator:
    def __init__(self, config: ClariSimConfig | None = None, faults: Faults | None = None) -> None:
        self.config = config or ClariSimConfig()
        self.faults = faults or Faults()
        self.jobs: dict[str, SimJob] = {}
        self.submissions: list[tuple[float, str]] = []  # (time, jobId) counted against the quota
        # Jobs that may still be queued or running, and a heap of when each stops: the limit
        # checks on every create look at these, not at every job ever made (that was quadratic:
        # the simulator, not the daemon, set the pace of long benchmark runs).
        self._live: dict[str, SimJob] = {}
        self._ends: list[tuple[float, str]] = []
        self._ids = itertools.count(1)
        self.rng = random.Random(7)
        self.stats: dict[str, int] = {
            "created": 0,
            "rejected_limits": 0,
            "status_requests": 0,
            "list_requests": 0,
            "results_requests": 0,
            "cancel_requests": 0,
            "limits_requests": 0,
            "max_active": 0,
        }
        self.created_by_title: dict[str, int] = {}

    # --- application ------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[make_middleware(self.faults, error_body=self._fault_body)]
        )
        app.router.add_post("/export/forecast/{forecastId}", self.create_forecast)
        app.router.add_post("/export/activity", self.create_activity)
        app.router.add_post("/export/audit/events", self.create_audit)
        app.router.add_get("/export/jobs", self.list_jobs)
        app.router.add_get("/export/jobs/{jobId}", self.job_status)
        app.router.add_patch("/export/jobs/{jobId}", self.cancel_job)
        app.router.add_get("/export/jobs/{jobId}/results", self.results)
        app.router.add_get("/admin/limits", self.limits)
        app.router.add_get("/_sim/stats", self.sim_stats)
        add_request_log(app, self.faults)
        app.router.add_post("/_sim/config", self.sim_config)
        app.router.add_post("/_sim/seed", self.sim_seed)
        app.router.add_get("/_sim/jobs", self.sim_jobs)
        return app

    @staticmethod
    def _fault_body(status: int) -> dict[str, Any]:
        if status == 429:
            return _err("rate_limited", "Too many requests")
        return _err("internal_server_error", "An unexpected error occurred.")

    def _auth(self, request: web.Request) -> web.Response | None:
        key = request.headers.get("apikey")
        if not key or (self.config.api_key is not None and key != self.config.api_key):
            return web.json_response({"message": "Invalid authentication credentials"}, status=401)
        return None

    # --- limits -----------------------------------------------------------------------------
    def _add(self, job: SimJob) -> None:
        self.jobs[job.job_id] = job
        self._live[job.job_id] = job
        heapq.heappush(self._ends, (job.created + job.queue_delay + job.duration, job.job_id))

    def active(self, now: float) -> list[SimJob]:
        while self._ends and self._ends[0][0] <= now:
            self._live.pop(heapq.heappop(self._ends)[1], None)
        return [j for j in self._live.values() if j.status(now) in ACTIVE]

    def quota_used(self, now: float) -> list[str]:
        return [jid for t, jid in self.submissions if now - t < WINDOW]

    def quota_count(self, now: float) -> int:
        """len(quota_used(now)) without building it (submissions are in time order)."""
        return len(self.submissions) - bisect.bisect_right(
            self.submissions, now - WINDOW, key=lambda s: s[0]
        )

    def _limit_error(self, now: float) -> web.Response | None:
        if (
            len(self.active(now)) >= self.config.concurrent_limit
            or self.quota_count(now) >= self.config.monthly_quota
        ):
            self.stats["rejected_limits"] += 1
            msg = (
                f"The monthly quota limit of {self.config.monthly_quota} or concurrent limit of "
                f"{self.config.concurrent_limit} has been reached."
            )
            body = _err("export_monthly_quota_reached", msg)
            body["source"] = "Export"
            return web.json_response(body, status=400)
        return None

    async def limits(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        self.stats["limits_requests"] += 1
        now = time.time()
        active = self.active(now)
        used = self.quota_used(now)
        body: dict[str, Any] = {
            "concurrentLimit": self.config.concurrent_limit,
            "monthlyQuota": self.config.monthly_quota,
            "submittedJobIds": used,
            "availableConcurrentLimit": max(0, self.config.concurrent_limit - len(active)),
            "availableMonthlyQuota": max(0, self.config.monthly_quota - len(used)),
        }
        running = [j.job_id for j in active if j.status(now) == "STARTED"]
        if running:
            body["runningJobIds"] = running
        return web.json_response({"jobs": body})

    # --- create -----------------------------------------------------------------------------
    async def _body(self, request: web.Request, namespace: str) -> dict[str, Any] | web.Response:
        if not request.can_read_body:
            return {}
        raw = await request.text()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return web.json_response(
                _err("bad_request", f"The request body was malformed: {raw[:100]}", namespace),
                status=400,
            )
        if not isinstance(body, dict):
            return web.json_response(
                _err("bad_request", "The request body was malformed: not an object", namespace),
                status=400,
            )
        return body

    def _duration(self) -> float:
        c = self.config
        if c.duration_sigma <= 0:
            return c.duration
        return c.duration * math.exp(self.rng.gauss(0, c.duration_sigma))

    async def _create(
        self,
        request: web.Request,
        module: str,
        title: str,
        fmt: str,
        params: dict[str, Any],
        status: int,
    ) -> web.StreamResponse:
        now = time.time()
        if (refused := self._limit_error(now)) is not None:
            return refused
        job_id = f"{int(now):08x}{next(self._ids):016x}"
        job = SimJob(
            job_id=job_id,
            module=module,
            title=title,
            fmt=fmt,
            created=now,
            queue_delay=self.config.queue_delay,
            duration=self._duration(),
            fails=self.rng.random() < self.config.fail_rate,
            params=params,
        )
        self._add(job)
        self.submissions.append((now, job_id))
        self.stats["created"] += 1
        self.created_by_title[title] = self.created_by_title.get(title, 0) + 1
        self.stats["max_active"] = max(self.stats["max_active"], len(self.active(now)))
        if self.faults.roll(self.config.lost_submit_rate):
            self.faults.counts["lost_submit"] += 1
            return drop(request)
        return web.json_response({"jobId": job_id}, status=status)

    async def create_forecast(self, request: web.Request) -> web.StreamResponse:
        if (denied := self._auth(request)) is not None:
            return denied
        body = await self._body(request, "fcw")
        if isinstance(body, web.Response):
            return body
        forecast_id = request.match_info["forecastId"]
        if forecast_id in self.config.unknown_forecasts:
            return web.json_response(
                _err(
                    "no_such_forecast_config",
                    f"Forecast {forecast_id} does not exist in the ForecastTemplate.",
                    "fcw",
                ),
                status=400,
            )
        types = body.get("typesToExport", ["forecast", "forecast_updated"])
        if not isinstance(types, list) or any(t not in FORECAST_TYPES for t in types):
            bad = (
                [t for t in types if t not in FORECAST_TYPES] if isinstance(types, list) else types
            )
            return web.json_response(
                _err(
                    "bad_request",
                    f"The following typesToExport values are invalid: {json.dumps(bad)}",
                    "fcw",
                ),
                status=400,
            )
        if any(t in ("crm_total", "crm_closed") for t in types):
            return web.json_response(
                _err(
                    "type_not_supported",
                    "CRM Totals and CRM Closed are not supported typeToExport values for Export "
                    "API. Please see Forecast API documentation if you'd like to retrieve CRM "
                    "Totals or CRM Closed values.",
                    "fcw",
                ),
                status=400,
            )
        period = body.get("timePeriod")
        if period is not None and not re.fullmatch(r"\d{4}_Q[1-4]", str(period)):
            return web.json_response(
                _err("bad_request", f"The request body was malformed: timePeriod {period}", "fcw"),
                status=400,
            )
        currency = body.get("currency")
        if currency is not None and not re.fullmatch(r"[A-Z]{3}", str(currency)):
            return web.json_response(
                _err("bad_request", "The currency parameter is invalid.", "fcw"), status=400
            )
        fmt = str(body.get("exportFormat", "JSON")).upper()
        if fmt not in ("JSON", "CSV"):
            return web.json_response(
                _err("bad_request", "The request body was malformed: exportFormat", "fcw"),
                status=400,
            )
        return await self._create(request, "FORECAST", forecast_id, fmt, body, 200)

    async def create_activity(self, request: web.Request) -> web.StreamResponse:
        if (denied := self._auth(request)) is not None:
            return denied
        body = await self._body(request, "activity")
        if isinstance(body, web.Response):
            return body
        problems = [k for k in ("startDate", "endDate") if not body.get(k)]
        types = body.get("activityTypes") or []
        if not isinstance(types, list) or any(t not in ACTIVITY_TYPES for t in types):
            problems.append("activityTypes")
        if str(body.get("exportFormat", "JSON")).upper() != "JSON":
            problems.append("exportFormat")
        if problems:
            return web.json_response(
                {
                    "code": "Bad request",
                    "namespace": "activity",
                    "errorId": uuid.uuid4().hex,
                    "message": f"Invalid or missing: {', '.join(problems)}",
                    "userId": "1",
                    "orgId": "101",
                },
                status=400,
            )
        return await self._create(request, "ACTIVITY", "Activity Export", "JSON", body, 202)

    async def create_audit(self, request: web.Request) -> web.StreamResponse:
        if (denied := self._auth(request)) is not None:
            return denied
        body = await self._body(request, "audit")
        if isinstance(body, web.Response):
            return body
        session_type = body.get("sessionType")
        if session_type is not None and session_type not in ("WEB", "IOS", "ANDROID"):
            return web.json_response(
                {
                    "errors": [
                        {
                            "status": "400",
                            "code": "invalid_parameter",
                            "message": "Invalid sessionType",
                            "target": "sessionType",
                        }
                    ]
                },
                status=400,
            )
        return await self._create(request, "AUDIT", "Audit Events Export", "JSON", body, 202)

    # --- status, cancel, results ------------------------------------------------------------
    def _job(self, request: web.Request) -> SimJob | web.Response:
        job = self.jobs.get(request.match_info["jobId"])
        if job is None:
            return web.json_response(
                _err("invalid_jobId", "Cannot retrieve data for the requested jobId."), status=400
            )
        return job

    async def list_jobs(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        self.stats["list_requests"] += 1
        now = time.time()
        return web.json_response(
            [j.to_json(now, self.config.expire_after) for j in self.jobs.values()]
        )

    async def job_status(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        self.stats["status_requests"] += 1
        job = self._job(request)
        if isinstance(job, web.Response):
            return job
        return web.json_response(job.to_json(time.time(), self.config.expire_after))

    async def cancel_job(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        self.stats["cancel_requests"] += 1
        job = self._job(request)
        if isinstance(job, web.Response):
            return job
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or body.get("type") != "CANCEL":
            return web.json_response(
                _err("bad_request", "Only type CANCEL is supported."), status=400
            )
        now = time.time()
        status = job.status(now)
        if status not in ACTIVE:
            return web.json_response(
                _err(
                    "export_failed_to_cancel",
                    "Cannot cancel the job because it already finished executing.",
                ),
                status=400,
            )
        job.cancelled_status = "CANCELLED" if status == "SCHEDULED" else "ABORTED"
        job.cancelled_at = now
        self.submissions = [(t, jid) for t, jid in self.submissions if jid != job.job_id]
        return web.json_response({"status": "CANCELLED", "successful": True})

    async def results(self, request: web.Request) -> web.StreamResponse:
        if (denied := self._auth(request)) is not None:
            return denied
        self.stats["results_requests"] += 1
        job = self._job(request)
        if isinstance(job, web.Response):
            return job
        now = time.time()
        if job.status(now) != "DONE":
            return web.json_response(
                _err(
                    "invalid_jobId",
                    "Cannot retrieve data for job because it has not finished executing.",
                ),
                status=400,
            )
        if now > job.created + job.queue_delay + job.duration + self.config.expire_after:
            return web.json_response(_err("invalid_jobId", "The export has expired."), status=400)
        job.downloads += 1
        if self.config.result_bytes > 0:
            return await self._stream_big(request, job)
        payload = self.result_bytes(job)
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/csv" if job.fmt == "CSV" else "application/json",
                "Content-Length": str(len(payload)),
            }
        )
        await resp.prepare(request)
        chunk = 1 << 16
        cut = len(payload) // 2 if self.faults.roll(self.config.download_drop_rate) else None
        for start in range(0, len(payload), chunk):
            if cut is not None and start >= cut:
                self.faults.counts["download_dropped"] += 1
                if request.transport is not None:
                    request.transport.close()
                return resp
            await resp.write(payload[start : start + chunk])
            if start % (chunk * 64) == 0:
                await asyncio.sleep(0)
        await resp.write_eof()
        return resp

    async def _stream_big(self, request: web.Request, job: SimJob) -> web.StreamResponse:
        """A large CSV generated on the fly (benchmarks): constant memory on both sides."""
        head = (",".join(FORECAST_HEADER) + "\n").encode()
        line = BIG_LINE
        lines = max(1, (self.config.result_bytes - len(head)) // len(line))
        block = line * 8192
        length = len(head) + lines * len(line)
        resp = web.StreamResponse(
            headers={"Content-Type": "text/csv", "Content-Length": str(length)}
        )
        await resp.prepare(request)
        await resp.write(head)
        left = lines
        while left:
            n = min(left, 8192)
            await resp.write(block if n == 8192 else line * n)
            left -= n
        await resp.write_eof()
        return resp

    # --- result content (deterministic per job) ---------------------------------------------
    def result_rows(self, job: SimJob) -> list[dict[str, Any]]:
        rng = random.Random(job.job_id)
        n = self.config.result_rows
        every = self.config.multiline_every
        if job.module == "FORECAST":
            return [
                dict(
                    zip(
                        FORECAST_HEADER,
                        [
                            f"Rep {i}",
                            f"rep{i}@example.com",
                            f"005{i:012d}",
                            ('Sales Rep\nWest, "Bay"' if every and i % every == 0 else "Sales Rep"),
                            "CEO",
                            job.params.get("timePeriod", "current"),
                            "Commit",
                            str(i % 13),
                            "06/30/2023",
                            "06/30/2023",
                            "Forecast Value",
                            f"{rng.randint(0, 10**6)}",
                        ],
                        strict=True,
                    )
                )
                for i in range(n)
            ]
        if job.module == "ACTIVITY":
            return [
                {
                    "activityId": f"{rng.getrandbits(128):032x}",
                    "activityType": rng.choice(sorted(ACTIVITY_TYPES)),
                    "subject": f"Meeting {i}",
                    "date": 1702906200000 + i * 60000,
                    "activityOwnerId": "0073x000005ChMyQKK",
                    "accounts": [],
                    "opportunities": [],
                    "participants": [],
                }
                for i in range(n)
            ]
        return [
            {
                "actorId": str(rng.randint(1, 50)),
                "sessionId": str(uuid.UUID(int=rng.getrandbits(128))),
                "sessionType": "WEB",
                "event": "api.accessed",
                "ipAddress": "10.0.0.1",
                "actorType": "USER",
                "eventTimestamp": "2026-11-21T10:00:00Z",
            }
            for _ in range(n)
        ]

    def result_bytes(self, job: SimJob) -> bytes:
        rows = self.result_rows(job)
        if job.module == "FORECAST" and job.fmt == "CSV":
            lines = [",".join(FORECAST_HEADER)] + [
                ",".join(_csv_field(str(r[h])) for h in FORECAST_HEADER) for r in rows
            ]
            return ("\n".join(lines) + "\n").encode()
        if job.module == "FORECAST":
            return json.dumps(rows).encode()
        if job.module == "ACTIVITY":
            return json.dumps({"activities": rows}).encode()
        return json.dumps(
            {
                "items": rows,
                "actors": [
                    {
                        "actorType": "USER",
                        "actorId": "1",
                        "name": "Ava Turner",
                        "email": "ava@example.com",
                    }
                ],
            }
        ).encode()

    # --- control ----------------------------------------------------------------------------
    async def sim_stats(self, request: web.Request) -> web.Response:
        now = time.time()
        return web.json_response(
            {
                **self.stats,
                "active": len(self.active(now)),
                "quota_used": len(self.quota_used(now)),
                "faults": dict(self.faults.counts),
                "max_requests_per_second": self.faults.max_per_second(),
                "created_by_title": self.created_by_title,
            }
        )

    async def sim_jobs(self, request: web.Request) -> web.Response:
        """Every job as GET /export/jobs shows it, without auth or counting (test inspection),
        with the body of the request that created it (`params`; a forecast's id in `title`)."""
        now = time.time()
        return web.json_response(
            [
                {**j.to_json(now, self.config.expire_after), "params": j.params}
                for j in self.jobs.values()
            ]
        )

    async def sim_seed(self, request: web.Request) -> web.Response:
        """Create `count` long-running jobs outside the limits (benchmarks of many in flight)."""
        body = await request.json()
        now = time.time()
        ids = []
        for _ in range(int(body.get("count", 0))):
            job_id = f"{int(now):08x}{next(self._ids):016x}"
            self._add(
                SimJob(
                    job_id=job_id,
                    module="FORECAST",
                    title="seeded",
                    fmt="CSV",
                    created=now,
                    queue_delay=0.0,
                    duration=float(body.get("duration", 3600)),
                    fails=False,
                    params={},
                )
            )
            ids.append(job_id)
        return web.json_response({"jobIds": ids})

    async def sim_config(self, request: web.Request) -> web.Response:
        return await apply_sim_config(request, self.config, self.faults)
