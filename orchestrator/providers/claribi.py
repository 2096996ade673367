"""clariBI report generation and dashboard refresh (api-docs/claribi-api.txt).

Both are synchronous calls (30-60 s) that spend AI credits. Before one starts, `GET /usage/` must
show enough credits for it (the estimate: `estimated_credits`, else the most this pipeline spent
lately); if not, or if clariBI answers 402, the job waits (attempt unspent) or fails with
clariBI's message, as `when_out_of_credits` says. A call whose answer never came back may still
have spent credits: before calling again the job looks for what it made (reports listed after the
call began whose details name its template and data sources; a dashboard's `last_refresh`). One
generation per class (generation_class) is in the air at a time, so what it finds is unique or
nothing; anything else waits for the operator, and so does a lookup that fails: neither spends
an attempt (OutcomeUnknown). The one generation is a part in the ledger, with the
report id and the credits it consumed (`orchestrator quota` sums them).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import quote
from uuid import UUID

import aiohttp
import structlog
from pydantic import Field, model_validator

from orchestrator.config import ProviderConfig
from orchestrator.domain import Job, Part, PartState
from orchestrator.errors import (
    AuthFailed,
    BadAnswer,
    ProviderError,
    QuotaExceeded,
    Rejected,
    Throttled,
)
from orchestrator.http import HttpClient
from orchestrator.limits import AccountPace
from orchestrator.outputs import AtomicFile, count_rows
from orchestrator.providers.answers import Answer, RemoteId, parse_answer
from orchestrator.providers.base import (
    OutcomeUnknown,
    Params,
    StagedAdapterBase,
    Work,
    expand_list,
    register_kind,
    register_provider,
)
from orchestrator.reconcile import Candidate, Lost, decide, operator_hint
from orchestrator.redaction import redact

if TYPE_CHECKING:
    pass

log = structlog.get_logger(__name__)
REPORT, REFRESH = "claribi.report", "claribi.dashboard_refresh"
EXTENSIONS = {"excel": "xlsx", "json": "json", "pdf": "pdf", "html": "html", "csv": "csv"}
SYNC_TIMEOUT = 300.0  # generation is synchronous and documented at 30-60 s
SKEW = 5.0  # seconds of clock skew tolerated when matching a report to a lost call
# Generation requests (reports and dashboard refreshes) per API key, by tier: (hour, day).
GENERATION_LIMITS = {
    "trial": (5, 20),
    "starter": (20, 100),
    "professional": (100, 500),
    "enterprise": (500, 2000),
}
HOUR, DAY = 3600.0, 86400.0
MAX_PAGES = 200  # of GET /reports/ (100 each) read back to a lost call: beyond it, not believed


def generation_wait(sent: Sequence[float], now: float, per_hour: int, per_day: int) -> float:
    """Seconds until one more generation fits both windows (0: now). Pure."""
    waits = [0.0]
    for window, limit in ((HOUR, per_hour), (DAY, per_day)):
        inside = sorted(t for t in sent if now - t < window)
        if len(inside) >= limit:
            waits.append(inside[len(inside) - limit] + window - now)
    return max(waits)


class _CreditParams(Params):
    when_out_of_credits: Literal["wait", "fail"] = "wait"
    estimated_credits: int | None = Field(default=None, ge=1)


class ReportParams(_CreditParams):
    template_id: UUID
    data_source_ids: list[UUID] = Field(min_length=1)
    output_format: Literal["json", "pdf", "html", "excel", "csv"] = "pdf"
    report_parameters: dict[str, Any] | None = None


class RefreshParams(_CreditParams):
    dashboard_id: UUID | None = None
    dashboards: list[UUID] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one(self) -> RefreshParams:
        if (self.dashboard_id is None) == (self.dashboards is None):
            raise ValueError("give exactly one of dashboard_id or dashboards (a list)")
        return self


register_kind(
    REPORT,
    ReportParams,
    "clariBI report generation (POST /reports/generate/, spends credits) and download",
    staged=True,
)
register_kind(
    REFRESH,
    RefreshParams,
    "clariBI dashboard refresh (POST /dashboards/{id}/refresh/, spends credits)",
    staged=True,
    expand=expand_list("dashboards", "dashboard_id"),
)


# --- answers (api-docs/claribi-api.txt) -----------------------------------------------------------
A = TypeVar("A", bound=Answer)


class _Org(Answer):
    tier: str | None = None


class _Key(Answer):
    permissions: list[str] = []


class ClariBIVerify(Answer):
    """`GET /auth/verify/`."""

    valid: bool
    organization: _Org | None = None
    api_key: _Key | None = None


class _Credits(Answer):
    remaining: int


class ClariBIUsage(Answer):
    """`GET /usage/`: what the credit check acts on is `credits.remaining`."""

    credits: _Credits


class ClariBIReport(Answer):
    id: RemoteId
    output_format: str | None = None
    created_at: str | None = None
    processing_credits_used: int | float | None = None


class ClariBIReportDetail(Answer):
    """`GET /reports/{id}/`: what a lost generation is matched on (template, data sources) is
    read from its extra fields by same_generation."""

    id: RemoteId


class ClariBIReports(Answer):
    """`GET /reports/`: one page, newest first."""

    results: list[ClariBIReport]
    next: str | None = None


class ClariBIDashboard(Answer):
    id: RemoteId
    last_refresh: str | None = None


class ClariBIDashboards(Answer):
    results: list[ClariBIDashboard]


class ClariBIGenerated(Answer):
    """`POST /reports/generate/`."""

    report_id: RemoteId
    credits_consumed: int | float | None = None


class ClariBIRefreshed(Answer):
    """`POST /dashboards/{id}/refresh/`."""

    job_id: RemoteId | None = None
    dashboard_id: RemoteId | None = None
    credits_consumed: int | float | None = None
    last_refresh: str | None = None


def _refresh_stamp(detail: str) -> str:
    """The `last_refresh` a refresh part's detail recorded ("last_refresh T" or
    "last_refresh T (adopted: answer lost)")."""
    return detail.removeprefix("last_refresh ").split(" (", 1)[0]


def _ts(value: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def generation_class(job: Job) -> str:
    """What clariBI's listings can tell apart of a generation: a report's template, data
    sources and format (GET /reports/ and /reports/{id}/ echo them; report_parameters they do
    not), a refresh's dashboard. At most one generation per class is unresolved at a time."""
    p = job.params
    if job.kind == REFRESH:
        return f"dashboard {p['dashboard_id']}"
    sources = ",".join(sorted(str(s) for s in p["data_source_ids"]))
    return f"report of template {p['template_id']} on {sources} as {p.get('output_format', 'pdf')}"


def recent_reports(
    reports: Sequence[dict[str, Any]], since: float, fmt: str, taken: set[str]
) -> list[dict[str, Any]]:
    """Reports made since our call began (less skew), in our format, that no job owns."""
    return [
        r
        for r in reports
        if str(r.get("id")) not in taken
        and r.get("output_format") == fmt
        and (_ts(r.get("created_at")) or 0) >= since - SKEW
    ]


def same_generation(detail: dict[str, Any], job: Job) -> bool:
    """A report's details name our template and (where echoed) our data sources."""
    if str(detail.get("template")) != str(job.params["template_id"]):
        return False
    sources = detail.get("data_sources")
    if not isinstance(sources, list):
        return True
    ids = {str(s.get("id")) if isinstance(s, dict) else str(s) for s in sources}
    return ids == {str(s) for s in job.params["data_source_ids"]}


@register_provider("claribi", "https://claribi.com/api/v1")
class ClariBIAdapter(StagedAdapterBase):
    default_concurrency = (
        2  # jobs at once unless `concurrency` is set: each call spends credits and takes 30-60 s
    )

    def __init__(self, cfg: ProviderConfig) -> None:
        self.name = cfg.name or "claribi"
        self.cfg = cfg
        headers = {"Authorization": f"Bearer {cfg.secret()}", "Accept": "application/json"}
        pace = AccountPace()  # both clients share the account's rate window and pause
        self.http = HttpClient.for_provider(cfg, self.name, headers=headers, pace=pace)
        # Credit-spending calls are never repeated by the HTTP layer: a lost answer is looked up.
        # Generation is synchronous (30-60 s): its deadline is SYNC_TIMEOUT, not request_deadline.
        self.spend = HttpClient.for_provider(
            cfg,
            self.name,
            headers=headers,
            retries=0,
            pace=pace,
            request_deadline=max(cfg.request_deadline, SYNC_TIMEOUT + cfg.timeout),
        )
        self._tier: str | None = None
        self._classes: dict[str, asyncio.Lock] = {}  # generation_class -> one call at a time

    async def close(self) -> None:
        await self.http.close()
        await self.spend.close()

    def result_extension(self, job: Job) -> str:
        if job.kind == REFRESH:
            return "json"
        return EXTENSIONS[str(job.params.get("output_format", "pdf"))]

    # --- calls ----------------------------------------------------------------------------------
    async def _json(
        self,
        model: type[A],
        method: str,
        path: str,
        permission: str,
        *,
        client: HttpClient | None = None,
        where: str | None = None,
        **kw: Any,
    ) -> A:
        http = client or self.http
        try:
            data = await http.json(method, path, **kw)
        except AuthFailed as exc:
            if exc.status == 403 and permission:
                raise Rejected(
                    self.name,
                    f"the API key lacks the permission {permission} ({exc.message})",
                    code="FORBIDDEN",
                    status=403,
                ) from None
            raise
        return parse_answer(
            model, data, provider=self.name, where=where or http.endpoint(method, path)
        )

    async def verify(self) -> ClariBIVerify:
        return await self._json(ClariBIVerify, "GET", "/auth/verify/", "")

    async def check(self) -> dict[str, Any]:
        info = await self.verify()
        if not info.valid:
            raise AuthFailed(self.name, "GET /auth/verify/: the key is not valid", status=401)
        out: dict[str, Any] = {
            "tier": info.organization.tier if info.organization else None,
            "permissions": info.api_key.permissions if info.api_key else [],
        }
        try:
            out["credits"] = (await self.usage()).get("credits")
        except Rejected as exc:
            out["credits"] = f"unreadable ({exc.message})"
        return out

    async def usage(self) -> dict[str, Any]:
        return (await self._json(ClariBIUsage, "GET", "/usage/", "usage:read")).as_dict()

    async def list_reports(self, since: float) -> list[dict[str, Any]]:
        """Reports newest first, pages read until they are older than `since`."""
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            body = await self._json(
                ClariBIReports,
                "GET",
                "/reports/",
                "reports:read",
                params={"page": page, "page_size": 100},
            )
            items = [r.as_dict() for r in body.results]
            out += items
            oldest = min((_ts(r.get("created_at")) or 0 for r in items), default=0)
            if not body.next or not items or oldest < since - SKEW:
                return out
            if page >= MAX_PAGES:  # a provider that never stops paging must not hang the job
                raise BadAnswer(self.name, f"GET /reports/: more than {MAX_PAGES} pages")
            page += 1

    # --- credits --------------------------------------------------------------------------------
    async def _check_credits(self, job: Job, work: Work) -> None:
        estimate = job.params.get("estimated_credits")
        if estimate is None:
            recent = await work.ledger.recent_credits(job.pipeline)
            estimate = max(recent, default=0)
        if not estimate:
            return
        try:
            usage = await self.usage()
        except Rejected as exc:  # no usage:read: clariBI's own 402 is the check
            log.warning("claribi_usage_unreadable", job_id=job.id, error=str(exc))
            return
        remaining = int((usage.get("credits") or {}).get("remaining", 0))
        if remaining < int(estimate):
            self._out_of_credits(job, f"needs ~{estimate} credits, {remaining} left (GET /usage/)")

    def _out_of_credits(self, job: Job, message: str) -> None:
        if job.params.get("when_out_of_credits", "wait") == "fail":
            raise Rejected(self.name, message, code="INSUFFICIENT_CREDITS", status=402)
        raise QuotaExceeded(self.name, message, code="INSUFFICIENT_CREDITS", status=402)

    # --- the job --------------------------------------------------------------------------------
    async def run(self, job: Job, work: Work) -> dict[str, Any] | None:
        # Held from before the call is recorded SENDING until its outcome is known: a lost
        # answer then has at most one candidate of its class (taken first thing, so a job
        # resumed after a restart settles before a new one of its class may call).
        cls = generation_class(job)
        async with self._classes.setdefault(cls, asyncio.Lock()):
            parts = await work.parts()
            part = parts[0] if parts else Part(job_id=job.id, seq=0, state=PartState.PENDING)
            if part.state == PartState.SENDING:
                part = await self._settle_lost(job, work, part)
            if part.remote_id is None:
                part = await self._spend(job, work, part)
        if job.kind == REFRESH:
            return await self._write_refresh(job, work, part)
        return await self._download(job, work, part)

    async def _tier_limits(self) -> tuple[int, int]:
        """(per hour, per day) generation limits: the config's, else the key's tier's."""
        if self.cfg.generations_per_hour and self.cfg.generations_per_day:
            return self.cfg.generations_per_hour, self.cfg.generations_per_day
        if self._tier is None:
            try:
                info = await self.verify()
                self._tier = (info.organization.tier if info.organization else None) or "trial"
            except ProviderError as exc:
                log.warning("claribi_tier_unknown", error=str(exc))
                self._tier = "trial"  # the strictest, until the key can be verified
        hour, day = GENERATION_LIMITS.get(self._tier, GENERATION_LIMITS["trial"])
        return self.cfg.generations_per_hour or hour, self.cfg.generations_per_day or day

    async def _check_generation_limits(self, job: Job, work: Work) -> None:
        """Generations of this account in the last hour and day, from the ledger (so a restart
        remembers them): one more must fit both of the tier's limits."""
        per_hour, per_day = await self._tier_limits()
        now = time.time()
        sent = await work.ledger.part_send_times(job.provider, now - DAY)
        wait = generation_wait(sent, now, per_hour, per_day)
        if wait > 0:
            raise Throttled(
                self.name,
                f"generation limit ({per_hour}/hour, {per_day}/day) reached; next in {wait:.0f} s",
                retry_after=wait,
                code="GENERATION_LIMIT",
            )

    async def _spend(self, job: Job, work: Work, part: Part) -> Part:
        await self._check_credits(job, work)
        await self._check_generation_limits(job, work)
        started = time.time()
        sending = Part(
            job_id=job.id, seq=0, state=PartState.SENDING, name=f"sent:{int(started * 1000)}"
        )
        await work.save(sending)
        p = job.params
        timeout = aiohttp.ClientTimeout(
            total=SYNC_TIMEOUT + self.cfg.timeout,
            sock_connect=self.cfg.timeout,
            sock_read=SYNC_TIMEOUT,
        )
        if job.kind == REPORT:
            path, permission = "/reports/generate/", "reports:generate"
            body: dict[str, Any] | None = {
                "template_id": str(p["template_id"]),
                "data_source_ids": [str(s) for s in p["data_source_ids"]],
                "output_format": p.get("output_format", "pdf"),
            }
            if p.get("report_parameters"):
                assert body is not None
                body["report_parameters"] = p["report_parameters"]
        else:
            dashboard = quote(str(p["dashboard_id"]), safe="")
            path, permission = f"/dashboards/{dashboard}/refresh/", "dashboards:refresh"
            body = None
        model: type[ClariBIGenerated | ClariBIRefreshed] = (
            ClariBIGenerated if job.kind == REPORT else ClariBIRefreshed
        )
        try:
            answer = await self._json(
                model, "POST", path, permission, client=self.spend, json=body, timeout=timeout
            )
        except Rejected as exc:
            await work.save(Part(job_id=job.id, seq=0, state=PartState.PENDING))
            if exc.status == 402:
                self._out_of_credits(job, exc.message)
            raise
        except Throttled:
            await work.save(Part(job_id=job.id, seq=0, state=PartState.PENDING))
            raise
        except ProviderError as exc:  # no answer: did it happen anyway?
            log.warning("claribi_answer_lost", job_id=job.id, error=str(exc))
            settled = await self._settle_lost(job, work, sending)
            if settled.remote_id is None:
                raise  # provably nothing made: a failed attempt like any other
            return settled
        if isinstance(answer, ClariBIGenerated):
            remote = answer.report_id
        else:
            remote = answer.job_id or answer.dashboard_id or "refreshed"
        credits = answer.credits_consumed
        done = Part(
            job_id=job.id,
            seq=0,
            state=PartState.RUNNING,
            name=sending.name,
            remote_id=remote,
            credits=int(credits) if isinstance(credits, int | float) else None,
            detail=(
                redact(f"last_refresh {str(answer.last_refresh)[:40]}")
                if isinstance(answer, ClariBIRefreshed)
                else None
            ),
        )
        await work.save(done)
        log.info("claribi_spent", job_id=job.id, remote_id=remote, credits=done.credits)
        return done

    async def _settle_lost(self, job: Job, work: Work, part: Part) -> Part:
        """A call that may have happened: adopt what it provably made, record that it provably
        made nothing, or raise OutcomeUnknown (the job waits, no attempt spent)."""
        since = int((part.name or "sent:0").split(":", 1)[1]) / 1000.0
        cls = generation_class(job)
        try:
            others = [
                o
                for o in await work.ledger.jobs_sending(job.provider)
                if o.id != job.id and generation_class(o) == cls
            ]
            found = await self._made_since(job, work, since)
        except ProviderError as exc:
            raise OutcomeUnknown(
                self.name, f"a generation's outcome is unknown, not looked up yet: {exc.message}"
            ) from None
        lost = [
            Lost(job_id=j, cls=cls, since_ms=int((since - SKEW) * 1000))
            for j in [job.id, *(o.id for o in others)]
        ]
        candidates = [
            Candidate(remote_id=rid, cls=cls, created_ms=int(t * 1000))
            for rid, (t, _credits, _detail) in found.items()
        ]
        lookup = decide(lost, candidates, set())[job.id]
        if lookup.ambiguous is not None:
            raise OutcomeUnknown(self.name, lookup.ambiguous + operator_hint(job.id))
        if lookup.remote_id is None:
            cleared = Part(job_id=job.id, seq=0, state=PartState.PENDING)
            await work.save(cleared)
            return cleared
        _t, credits, detail = found[lookup.remote_id]
        adopted = Part(
            job_id=job.id,
            seq=0,
            state=PartState.RUNNING,
            name=part.name,
            remote_id=lookup.remote_id,
            credits=credits,
            detail=detail,
        )
        await work.save(adopted)
        log.info("claribi_adopted", job_id=job.id, remote_id=adopted.remote_id)
        return adopted

    async def _made_since(
        self, job: Job, work: Work, since: float
    ) -> dict[str, tuple[float, int | None, str]]:
        """What clariBI shows made by a generation like this job's since `since`:
        remote id -> (created, credits, part detail)."""
        if job.kind == REFRESH:
            listing = await self._json(ClariBIDashboards, "GET", "/dashboards/", "dashboards:read")
            target = str(job.params["dashboard_id"])
            # A refresh another job of this dashboard already recorded is not ours: the one
            # before ours may fall within the skew (every few seconds, a crash between
            # recording the call and sending it adopted the previous job's refresh).
            claimed = {
                _ts(_refresh_stamp(detail))
                for other, params, detail in await work.ledger.part_details_since(
                    job.provider, REFRESH, datetime.fromtimestamp(since - 2 * SKEW, UTC)
                )
                if other != job.id and str(params.get("dashboard_id")) == target
            }
            for d in listing.results:
                last = _ts(d.last_refresh)
                if d.id == target and last and last >= since - SKEW and last not in claimed:
                    detail = f"last_refresh {d.last_refresh} (adopted: answer lost)"
                    return {"refreshed": (last, None, detail)}
            return {}
        own = {p.remote_id for p in await work.parts() if p.remote_id}
        taken = await work.ledger.part_remote_ids(job.provider) - own  # other jobs' reports
        fmt = str(job.params.get("output_format", "pdf"))
        out: dict[str, tuple[float, int | None, str]] = {}
        for r in recent_reports(await self.list_reports(since), since, fmt, taken):
            rid = str(r["id"])
            report = await self._json(
                ClariBIReportDetail,
                "GET",
                f"/reports/{quote(rid, safe='')}/",
                "reports:read",
                where="GET /reports/{id}/",
            )
            if same_generation(report.as_dict(), job):
                credits = r.get("processing_credits_used")
                out[rid] = (
                    _ts(r.get("created_at")) or 0.0,
                    int(credits) if isinstance(credits, int | float) else None,
                    "adopted after a lost answer",
                )
        return out

    async def _download(self, job: Job, work: Work, part: Part) -> dict[str, Any]:
        final = work.result_path(self.result_extension(job))
        sink = AtomicFile(final).open()
        try:
            path = f"/reports/{quote(str(part.remote_id), safe='')}/download/"
            async with self.http.open("GET", path, download=True) as resp:
                async for chunk in resp.content.iter_chunked(1 << 20):
                    await sink.write(chunk)
            await sink.commit(work.committer)
        except AuthFailed as exc:
            sink.abort()
            if exc.status == 403:
                raise Rejected(
                    self.name, f"the API key lacks the permission reports:read ({exc.message})"
                ) from None
            raise
        except BaseException:
            sink.abort()
            raise
        rows = await asyncio.to_thread(count_rows, final, final.suffix.lstrip("."))
        return await _stored(work, part, sink, rows)

    async def _write_refresh(self, job: Job, work: Work, part: Part) -> dict[str, Any]:
        record = {
            "dashboard_id": str(job.params["dashboard_id"]),
            "refreshed": True,
            "credits_consumed": part.credits,
            "detail": part.detail,
            "recorded_at": datetime.now(UTC).isoformat(),
        }
        data = json.dumps(record).encode()
        final = work.result_path("json")
        sink = AtomicFile(final).open()
        await sink.write(data)
        await sink.commit(work.committer)
        return await _stored(work, part, sink, None)


async def _stored(work: Work, part: Part, sink: AtomicFile, rows: int | None) -> dict[str, Any]:
    """The call's part marked DONE with the file it produced; the job's result row."""
    await work.save(
        replace(
            part, state=PartState.DONE, path=str(sink.final), bytes=sink.bytes, sha256=sink.sha256
        )
    )
    return {"path": str(sink.final), "bytes": sink.bytes, "sha256": sink.sha256, "rows": rows}
