"""Clari bulk exports: forecast, activity and audit events (api-docs/clari-api-openapi.yaml.txt).

All three kinds share one account: the same concurrency limit and rolling 30-day quota, the same
job-status endpoints, and `GET /export/jobs`, which answers for every in-flight job at once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any, Literal
from urllib.parse import quote
from uuid import UUID

from pydantic import ConfigDict, Field, field_validator, model_validator

from orchestrator.config import ProviderConfig
from orchestrator.domain import Job, RemoteState, RemoteStatus
from orchestrator.errors import QuotaExceeded, Rejected
from orchestrator.http import HttpClient
from orchestrator.limits import AccountPace, ProviderLimits
from orchestrator.providers.answers import Answer, RemoteId, answer, parse_answer
from orchestrator.providers.base import Params, Sink, Work, register_kind, register_provider
from orchestrator.providers.clari_ingest import KIND as INGEST
from orchestrator.providers.clari_ingest import ClariIngest
from orchestrator.reconcile import Candidate, Lookup, Lost, decide

FORECAST, ACTIVITY, AUDIT = "clari.forecast_export", "clari.activity_export", "clari.audit_export"
MODULES = {FORECAST: "FORECAST", ACTIVITY: "ACTIVITY", AUDIT: "AUDIT"}
STATUS_MAP = {
    "SCHEDULED": RemoteState.QUEUED,
    "STARTED": RemoteState.RUNNING,
    "DONE": RemoteState.DONE,
    "FAILED": RemoteState.FAILED,
    "CANCELLED": RemoteState.CANCELLED,
    "ABORTED": RemoteState.CANCELLED,
}
QUOTA_CODES = {"export_monthly_quota_reached"}
RECOVERY_SKEW_MS = 5_000  # clock skew tolerated when matching a remote job to a lost submit
_ISO_DT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

ForecastType = Literal["forecast", "quota", "forecast_updated", "adjustment"]
ActivityType = Literal[
    "MEETING", "EMAIL_SENT", "EMAIL_RECEIVED", "ATTACHMENT_SENT", "ATTACHMENT_RECEIVED"
]


def _iso_datetime(value: str, *, allow_date: bool) -> str:
    if _ISO_DT.match(value):
        datetime.fromisoformat(value.replace("Z", "+00:00"))
        return value
    if allow_date and _ISO_DATE.match(value):
        date.fromisoformat(value)
        return value
    hint = "2026-11-21T00:00:00Z" + (" or a date 2026-11-21" if allow_date else "")
    raise ValueError(f"{value!r} is not an ISO 8601 date-time with a UTC offset, like {hint}")


class ForecastParams(Params):
    forecastId: str = Field(min_length=1)
    timePeriod: str | None = Field(default=None, pattern=r"^\d{4}_Q[1-4]$")
    typesToExport: list[str] | None = None
    scopeId: str | None = None
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")
    schedule: Literal["NONE", "ONCE", "MAX"] | None = None
    includeHistorical: bool | None = None
    exportFormat: Literal["CSV", "JSON"] = "JSON"

    @field_validator("typesToExport")
    @classmethod
    def _types(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("must list at least one type")
        unsupported = [t for t in v if t in ("crm_total", "crm_closed")]
        if unsupported:
            raise ValueError(
                f"{unsupported} are not supported by the export API (type_not_supported); "
                "use forecast, quota, forecast_updated or adjustment"
            )
        bad = [t for t in v if t not in ("forecast", "quota", "forecast_updated", "adjustment")]
        if bad:
            raise ValueError(
                f"invalid typesToExport {bad}; use forecast, quota, forecast_updated or adjustment"
            )
        return v


class ActivityParams(Params):
    activityTypes: list[ActivityType] | None = None
    startDate: str
    endDate: str
    exportFormat: Literal["JSON"] = "JSON"

    @field_validator("startDate", "endDate")
    @classmethod
    def _dt(cls, v: str) -> str:
        return _iso_datetime(v, allow_date=False)

    @model_validator(mode="after")
    def _order(self) -> ActivityParams:
        start = datetime.fromisoformat(self.startDate.replace("Z", "+00:00"))
        end = datetime.fromisoformat(self.endDate.replace("Z", "+00:00"))
        if end < start:
            raise ValueError("endDate is before startDate")
        return self


class AuditParams(Params):
    actorId: int | None = None
    impersonatingActorId: int | None = None
    sessionId: UUID | None = None
    sessionType: Literal["WEB", "IOS", "ANDROID"] | None = None
    dateFrom: str | None = None
    dateTo: str | None = None
    event: str | None = None

    @field_validator("dateFrom", "dateTo")
    @classmethod
    def _dt(cls, v: str | None) -> str | None:
        return None if v is None else _iso_datetime(v, allow_date=True)


register_kind(FORECAST, ForecastParams, "Clari forecast tab export (POST /export/forecast/{id})")
register_kind(ACTIVITY, ActivityParams, "Clari activity export (POST /export/activity)")
register_kind(AUDIT, AuditParams, "Clari audit events export (POST /export/audit/events)")


# --- answers (api-docs: GET /admin/limits, POST /export/..., GET /export/jobs[/{id}]) -----------


class ClariLimits(Answer):
    concurrentLimit: int
    monthlyQuota: int
    availableConcurrentLimit: int
    availableMonthlyQuota: int

    @model_validator(mode="before")
    @classmethod
    def _unwrap(cls, data: Any) -> Any:
        return (
            data["jobs"] if isinstance(data, dict) and isinstance(data.get("jobs"), dict) else data
        )


class ClariSubmitted(Answer):
    jobId: RemoteId


class ClariJobInfo(Answer):
    """One export job. Every field the job listing carries is kept (recovery reads them)."""

    jobId: RemoteId
    status: str
    module: str | None = None
    startTime: int | str | None = None
    expiredTime: int | str | None = None


class ClariJobStatus(Answer):
    """One export job as a poll reads it: what it acts on, nothing else kept (a listing of 5,000
    jobs validated in ~25 ms this way, ~75 ms keeping every field)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    jobId: RemoteId
    status: str
    startTime: int | str | None = None
    expiredTime: int | str | None = None


class ClariJobList(Answer):
    """`GET /export/jobs`: an array of jobs (also accepted: `{"jobs": [...]}`). Anything else is
    an error, not "no jobs": recovery would read an empty listing as "nothing was created"."""

    jobs: list[ClariJobInfo]

    @model_validator(mode="before")
    @classmethod
    def _wrap(cls, data: Any) -> Any:
        return {"jobs": data} if isinstance(data, list) else data


class ClariStatusList(Answer):
    """`GET /export/jobs` as a batch poll reads it."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    jobs: list[ClariJobStatus]

    @model_validator(mode="before")
    @classmethod
    def _wrap(cls, data: Any) -> Any:
        return {"jobs": data} if isinstance(data, list) else data


def _status_of(item: ClariJobStatus | ClariJobInfo) -> RemoteStatus:
    return remote_status(
        {"status": item.status, "startTime": item.startTime, "expiredTime": item.expiredTime}
    )


def remote_status(item: dict[str, Any]) -> RemoteStatus:
    raw = str(item.get("status", "")).rstrip(",")
    return RemoteStatus(
        state=STATUS_MAP.get(raw, RemoteState.UNKNOWN),
        raw_status=raw,
        started_ms=_int(item.get("startTime")),
        expires_ms=_int(item.get("expiredTime")),
    )


def _int(v: Any) -> int | None:
    try:
        return int(str(v).rstrip(","))
    except (TypeError, ValueError):
        return None


def parse_limits(body: Any, provider: str = "clari") -> ProviderLimits:
    data = parse_answer(ClariLimits, body, provider=provider, where="GET /admin/limits")
    return ProviderLimits(
        concurrent_limit=data.concurrentLimit,
        monthly_quota=data.monthlyQuota,
        available_concurrent=data.availableConcurrentLimit,
        available_quota=data.availableMonthlyQuota,
    )


def match_lost_submissions(
    jobs: Sequence[Job], remote: Sequence[dict[str, Any]], known_remote_ids: set[str]
) -> dict[int, Lookup]:
    """Jobs caught in SUBMITTING against `GET /export/jobs`, which echoes neither our params nor
    any id of ours: only the module and the creation time. The dispatcher keeps at most one
    submission per module unresolved, so the rule in orchestrator.reconcile decides: one unowned
    remote job of the module created since the submit began is its; none means it created
    nothing (the listing holds every job of this token); anything else is the operator's."""
    lost = [
        Lost(
            job_id=job.id,
            cls=MODULES.get(job.kind, job.kind),
            since_ms=(
                int(job.submitted_at.timestamp() * 1000) - RECOVERY_SKEW_MS
                if job.submitted_at
                else 0
            ),
        )
        for job in jobs
    ]
    candidates = [
        Candidate(
            remote_id=str(r.get("jobId", "")).rstrip(","),
            cls=str(r.get("module", "")).rstrip(","),
            created_ms=_int(r.get("startTime")) or 0,
        )
        for r in remote
        if str(r.get("jobId", "")).rstrip(",")
    ]
    return decide(lost, candidates, known_remote_ids)


@register_provider("clari", "https://api.clari.com/v4")
class ClariAdapter:
    batch_poll = True

    def __init__(self, cfg: ProviderConfig) -> None:
        self.name = cfg.name or "clari"
        headers = {"apikey": cfg.secret(), "Accept": "application/json"}
        pace = AccountPace()  # one pause and rate window for every call of the account
        self.http = HttpClient.for_provider(cfg, self.name, headers=headers, pace=pace)
        # A create is never repeated blindly (a 5xx or a dropped connection may come after the
        # export was made): its unknown outcome goes to reconciliation. A 429 made nothing, so
        # it is retried as usual. Same pause and request-rate windows as every other call.
        self.spend = HttpClient.for_provider(
            cfg, self.name, headers=headers, retries=0, throttle_retries=cfg.retries, pace=pace
        )

        self.ingest = ClariIngest(cfg, self.name, pace=pace)

    async def close(self) -> None:
        await self.http.close()
        await self.spend.close()
        await self.ingest.close()

    async def run(self, job: Job, work: Work) -> dict[str, Any] | None:
        """Staged kinds of this account: bulk ingest (exports go submit → poll → fetch)."""
        if job.kind != INGEST:
            raise Rejected(self.name, f"{job.kind} is not run in stages")
        return await self.ingest.run(job, work)

    async def limits(self) -> ProviderLimits:
        return parse_limits(await self.http.json("GET", "/admin/limits"), self.name)

    async def check(self) -> dict[str, Any]:
        """Credentials verified with the cheapest calls (check-config --online)."""
        lim = await self.limits()
        out: dict[str, Any] = {
            "concurrent_limit": lim.concurrent_limit,
            "available_concurrent": lim.available_concurrent,
            "monthly_quota": lim.monthly_quota,
            "available_quota": lim.available_quota,
        }
        if self.ingest.cfg.partner_key is not None:
            out["ingest"] = await self.ingest.check()
        return out

    def _request(self, job: Job) -> tuple[str, dict[str, Any]]:
        body = {k: v for k, v in job.params.items() if v is not None}
        if job.kind == FORECAST:
            forecast_id = quote(str(body.pop("forecastId")), safe="")
            return f"/export/forecast/{forecast_id}", body
        if job.kind == ACTIVITY:
            return "/export/activity", body
        if job.kind == AUDIT:
            return "/export/audit/events", body
        raise Rejected(self.name, f"unsupported kind {job.kind}")

    async def submit(self, job: Job) -> str:
        path, body = self._request(job)
        try:
            submitted = await answer(self.spend, ClariSubmitted, "POST", path, json=body)
        except Rejected as exc:
            if exc.status == 400 and exc.code in QUOTA_CODES:
                raise QuotaExceeded(
                    self.name, exc.message, code=exc.code, status=exc.status
                ) from None
            raise
        return submitted.jobId

    async def list_jobs(self) -> list[dict[str, Any]]:
        """Every export job of the token, each checked to carry a jobId and a status."""
        listing = await answer(self.http, ClariJobList, "GET", "/export/jobs")
        return [item.as_dict() for item in listing.jobs]

    async def poll(self, remote_ids: Sequence[str]) -> dict[str, RemoteStatus]:
        wanted = {rid for rid in remote_ids if rid}
        if len(wanted) == 1:
            (rid,) = wanted
            try:
                one = await answer(self.http, ClariJobStatus, "GET", f"/export/jobs/{_q(rid)}")
            except Rejected as exc:
                if exc.status in (400, 404):
                    return {rid: RemoteStatus(state=RemoteState.UNKNOWN, raw_status=exc.code or "")}
                raise
            return {rid: _status_of(one)}
        out: dict[str, RemoteStatus] = {}
        listing = await answer(self.http, ClariStatusList, "GET", "/export/jobs")
        for item in listing.jobs:
            rid = item.jobId.rstrip(",")
            if rid in wanted:
                out[rid] = _status_of(item)
        for rid in wanted - out.keys():
            out[rid] = RemoteStatus(
                state=RemoteState.UNKNOWN, raw_status="missing from /export/jobs"
            )
        return out

    async def fetch(self, job: Job, sink: Sink) -> None:
        path = f"/export/jobs/{_q(job.remote_id)}/results"
        async with self.http.open("GET", path, download=True) as resp:
            async for chunk in resp.content.iter_chunked(1 << 20):
                await sink.write(chunk)

    async def cancel(self, job: Job) -> None:
        if not job.remote_id:
            return
        try:
            await self.http.json(
                "PATCH", f"/export/jobs/{_q(job.remote_id)}", json={"type": "CANCEL"}
            )
        except Rejected as exc:
            if exc.code != "export_failed_to_cancel":
                raise

    def ambiguity_class(self, job: Job) -> str | None:
        module = MODULES.get(job.kind)
        return None if module is None else f"export module {module}"

    async def find(self, jobs: Sequence[Job], known_remote_ids: set[str]) -> dict[int, Lookup]:
        return match_lost_submissions(jobs, await self.list_jobs(), known_remote_ids)

    def result_extension(self, job: Job) -> str:
        if job.kind == FORECAST and str(job.params.get("exportFormat", "JSON")).upper() == "CSV":
            return "csv"
        return "json"


def _q(remote_id: str | None) -> str:
    """A remote id as one path segment: `../../etc/x` must not climb the API's paths."""
    return quote(str(remote_id or ""), safe="")
