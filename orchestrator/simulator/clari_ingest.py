"""Clari bulk ingest simulator (api-docs/clari-api-openapi.yaml.txt, Data Ingestion API; served
under /clari/v2 like the real base URL): `POST /ingest/bulk/entity/{entity}` with `apikey` and
`partnerkey`, a multipart `FileData` JSON file of at most 10 MB, `mode` and `isLastBatch`; then
`GET /ingest/job/{jobId}`: QUEUED / IN_PROGRESS (202), SUCCESS / FAILED (200), VALIDATION_FAILED
(400, with errorCode/errorSummary items) — a whole file is refused when any record fails.
Error bodies are arrays of {errorCode, errorSummary}; `429 TOO_MANY_REQUESTS` past the
concurrent-ingestion limit."""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from orchestrator.simulator.faults import Faults, add_request_log, apply_sim_config, make_middleware

MAX_FILE = 10 * 1024 * 1024


def _errors(status: int, *items: tuple[str, str]) -> web.Response:
    return web.json_response([{"errorCode": c, "errorSummary": s} for c, s in items], status=status)


@dataclass(kw_only=True)
class IngestSimConfig:
    api_key: str | None = None
    partner_key: str | None = None
    entities: list[str] = field(default_factory=lambda: ["account", "opportunity"])
    max_concurrent: int = 2
    reject_ids: list[str] = field(default_factory=list)  # records Clari's schema refuses
    queue_delay: float = 0.05
    duration: float = 0.15
    fail_next: int = 0  # the next N ingestion jobs end FAILED (status read: HTTP 500)
    too_many_next: int = 0  # the next N uploads answer 429 TOO_MANY_REQUESTS, body read first


@dataclass(kw_only=True)
class IngestJob:
    job_id: str
    entity: str
    mode: str
    last: bool
    created: float
    records: int
    errors: list[dict[str, str]]
    file_name: str
    fails: bool = False

    def status(self, now: float, c: IngestSimConfig) -> str:
        age = now - self.created
        if age < c.queue_delay:
            return "QUEUED"
        if age < c.queue_delay + c.duration:
            return "IN_PROGRESS"
        if self.errors:
            return "VALIDATION_FAILED"
        return "FAILED" if self.fails else "SUCCESS"


def validate_payload(data: Any) -> tuple[int, list[dict[str, str]]]:
    """(records, errors) as Clari checks a file: the whole file fails on any bad record."""
    if not isinstance(data, list):
        return 0, [{"errorCode": "INVALID_INPUT_FORMAT", "errorSummary": "Payload is not an array"}]
    errors: list[dict[str, str]] = []
    count = 0
    for block in data:
        if not isinstance(block, dict) or not block.get("sourceEntity"):
            errors.append(
                {
                    "errorCode": "INVALID_INPUT_FORMAT",
                    "errorSummary": "sourceEntity is missing dataSet",
                }
            )
            continue
        records = block.get("records")
        if not isinstance(records, list):
            errors.append(
                {
                    "errorCode": "INVALID_INPUT_FORMAT",
                    "errorSummary": "records is missing for dataSet",
                }
            )
            continue
        seen: set[str] = set()
        for r in records:
            count += 1
            if not isinstance(r, dict) or not r.get("id"):
                errors.append(
                    {
                        "errorCode": "INVALID_INPUT_FORMAT",
                        "errorSummary": "Primary key field is missing",
                    }
                )
                continue
            if str(r["id"]) in seen:
                errors.append(
                    {
                        "errorCode": "INVALID_INPUT_FORMAT",
                        "errorSummary": "Duplicate record with value for primary key field",
                    }
                )
            seen.add(str(r["id"]))
            created, updated = r.get("createdAt"), r.get("updatedAt")
            if not isinstance(created, int | float) or not isinstance(updated, int | float):
                errors.append(
                    {"errorCode": "INVALID_INPUT_FORMAT", "errorSummary": "Field is missing"}
                )
            elif updated < created:
                errors.append(
                    {
                        "errorCode": "INVALID_INPUT_FORMAT",
                        "errorSummary": "Failed validation for data at path: / updatedAt should "
                        "be greater than or equal to createdAt",
                    }
                )
    return count, errors


class ClariIngestSimulator:
    def __init__(self, config: IngestSimConfig | None = None, faults: Faults | None = None) -> None:
        self.config = config or IngestSimConfig()
        self.faults = faults or Faults()
        self.jobs: dict[str, IngestJob] = {}
        self.received: dict[str, list[dict[str, Any]]] = {}
        self.file_sizes: list[tuple[str, int]] = []  # (entity, bytes) of each upload taken
        self._ids = itertools.count(1)
        self.stats: dict[str, int] = {
            "uploads": 0,
            "too_many": 0,
            "status_requests": 0,
            "max_active": 0,
            "last_batches": 0,
            "failed_jobs": 0,
        }

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._auth, make_middleware(self.faults, error_body=self._fault_body)],
            client_max_size=MAX_FILE * 2,
        )
        app.router.add_post("/ingest/bulk/entity/{entity}", self.upload)
        app.router.add_get("/ingest/job/{jobId}", self.job)
        app.router.add_get("/_sim/stats", self.sim_stats)
        add_request_log(app, self.faults)
        app.router.add_post("/_sim/config", self.sim_config)
        return app

    @staticmethod
    def _fault_body(status: int) -> dict[str, Any]:
        return {"error": "API rate limit exceeded" if status == 429 else "Internal error"}

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if "/_sim/" not in request.path:
            c = self.config
            key, partner = request.headers.get("apikey"), request.headers.get("partnerkey")
            if not key or (c.api_key is not None and key != c.api_key):
                return web.json_response(
                    {"error": "Invalid authentication credentials"}, status=401
                )
            if not partner or (c.partner_key is not None and partner != c.partner_key):
                return _errors(401, ("INVALID_PARTNER_KEY", "Unauthorized PartnerKey"))
        resp: web.StreamResponse = await handler(request)
        return resp

    def _active(self, now: float) -> int:
        return sum(
            1 for j in self.jobs.values() if j.status(now, self.config) in ("QUEUED", "IN_PROGRESS")
        )

    async def upload(self, request: web.Request) -> web.Response:
        entity = request.match_info["entity"]
        mode = request.query.get("mode", "incremental")
        if mode not in ("initial", "incremental"):
            return _errors(
                400,
                (
                    "INVALID_INPUT_FORMAT",
                    "Mode value is invalid. Please try again with a valid mode value, possible "
                    "values are [initial, increment]",
                ),
            )
        if entity not in self.config.entities:
            return _errors(
                400,
                (
                    "INVALID_INPUT_FORMAT",
                    "Entity is not valid/enabled for integration. Please try again with a "
                    "valid/enabled entity",
                ),
            )
        try:
            form = await request.post()
        except ValueError:
            form = None
        upload = form.get("FileData") if form is not None else None
        if upload is None or not hasattr(upload, "file"):
            return _errors(
                400,
                (
                    "INVALID_FILE_FORMAT",
                    "Allowed file format is JSON only. Please try again with right format.",
                ),
            )
        with upload.file:  # closed on every answer, a 429 too
            raw = upload.file.read()
        # Counted once the body is in, with no await before the job is registered: a check
        # before reading a (streamed) body let concurrent uploads all pass it.
        now = time.time()
        busy = self.config.too_many_next > 0
        if busy or self._active(now) >= self.config.max_concurrent:
            self.config.too_many_next -= int(busy)
            self.stats["too_many"] += 1
            return _errors(
                429,
                (
                    "TOO_MANY_REQUESTS",
                    "Max concurrent async ingestion jobs limit reached for partner",
                ),
            )
        if len(raw) > MAX_FILE:
            return _errors(400, ("INVALID_INPUT_FORMAT", "File size exceeds the 10MB limit"))
        self.file_sizes.append((entity, len(raw)))
        try:
            data = json.loads(raw)
        except ValueError:
            return _errors(
                400,
                (
                    "INVALID_FILE_FORMAT",
                    "Allowed file format is JSON only. Please try again with right format.",
                ),
            )
        count, errors = validate_payload(data)
        for block in data if isinstance(data, list) else []:
            for r in block.get("records", []) if isinstance(block, dict) else []:
                if isinstance(r, dict) and str(r.get("id")) in self.config.reject_ids:
                    errors.append(
                        {
                            "errorCode": "INVALID_INPUT_FORMAT",
                            "errorSummary": "Field type does not match expected type "
                            f"(id {r['id']})",
                        }
                    )
        job_id = f"{int(now):08x}{next(self._ids):016x}"
        last = request.query.get("isLastBatch", "false").lower() == "true"
        self.jobs[job_id] = IngestJob(
            job_id=job_id,
            entity=entity,
            mode=mode,
            last=last,
            created=now,
            records=count,
            errors=errors,
            file_name=str(getattr(upload, "filename", "data.json")),
            fails=not errors and self.config.fail_next > 0,
        )
        if self.jobs[job_id].fails:
            self.config.fail_next -= 1
            self.stats["failed_jobs"] += 1
        elif not errors:
            for block in data:
                self.received.setdefault(entity, []).extend(block["records"])
        self.stats["uploads"] += 1
        self.stats["last_batches"] += int(last)
        self.stats["max_active"] = max(self.stats["max_active"], self._active(now))
        return web.json_response({"jobId": job_id}, status=202)

    async def job(self, request: web.Request) -> web.Response:
        self.stats["status_requests"] += 1
        j = self.jobs.get(request.match_info["jobId"])
        if j is None:
            return web.json_response(
                {"error": "Bulk ingestion job not found. Please provide correct jobId."}, status=404
            )
        now = time.time()
        status = j.status(now, self.config)
        done = status not in ("QUEUED", "IN_PROGRESS")
        message: Any = {
            "SUCCESS": "Ingestion successfully completed.",
            "QUEUED": "Bulk ingestion job is queued",
            "IN_PROGRESS": "Bulk ingestion job is in progress",
            "FAILED": "Bulk ingestion job failed. Please retry ingestion.",
        }.get(status, j.errors)
        body = {
            "message": {
                "jobId": j.job_id,
                "orgId": 1234,
                "userId": 12345,
                "module": "DATA_INGESTION",
                "submittedTime": int(j.created * 1000),
                "startTime": int((j.created + self.config.queue_delay) * 1000),
                "endTime": int(now * 1000) if done else None,
                "title": "Data Ingestion",
                "fileName": j.file_name,
                "status": status,
                "message": message,
            }
        }
        code = {"VALIDATION_FAILED": 400, "FAILED": 500}.get(status, 202 if not done else 200)
        return web.json_response(body, status=code)

    async def sim_stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                **self.stats,
                "records": {k: len(v) for k, v in self.received.items()},
                "faults": dict(self.faults.counts),
            }
        )

    async def sim_config(self, request: web.Request) -> web.Response:
        return await apply_sim_config(request, self.config, self.faults)
