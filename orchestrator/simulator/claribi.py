"""clariBI API simulator (api-docs/claribi-api.txt): `claribi_` bearer keys with permissions,
`/auth/verify/`, `/usage/` credits, synchronous report generation that costs credits (402 with
the documented body when short), report listing / details / download, dashboards and their
refresh, per-key general and generation limits per window with X-RateLimit-* headers and 429.
Misbehaves on request: shared Faults, and generations whose answer is lost after the report
was made (the client timed out, the credits are spent)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
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

FORMATS = ("json", "pdf", "html", "excel", "csv")
ALL_PERMISSIONS = [
    "reports:read",
    "reports:generate",
    "reports:delete",
    "dashboards:read",
    "dashboards:create",
    "dashboards:update",
    "dashboards:refresh",
    "dashboards:delete",
    "data_sources:read",
    "usage:read",
]
TIER_LIMITS = {  # (general per hour, generation per hour)
    "trial": (60, 5),
    "starter": (300, 20),
    "professional": (1000, 100),
    "enterprise": (5000, 500),
}


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


@dataclass(kw_only=True)
class Report:
    id: str
    title: str
    output_format: str
    created: float
    completed: float
    credits: int
    template: str
    data_sources: list[str]
    body: dict[str, Any] = field(default_factory=dict)  # the generate request, as sent


@dataclass(kw_only=True)
class ClariBISimConfig:
    api_key: str | None = None  # None: any claribi_ key
    permissions: list[str] = field(default_factory=lambda: list(ALL_PERMISSIONS))
    tier: str = "professional"
    credits_limit: int = 5000
    credits_used: int = 0
    report_cost: int = 47
    refresh_cost: int = 23
    generation_seconds: float = 0.2  # the API says 30-60 s; scaled down
    window: float = 3600.0  # seconds of the per-key limit windows (hour)
    general_limit: int | None = None  # None: the tier's
    generation_limit: int | None = None
    lost_answer_rate: float = 0.0  # generate/refresh, then drop the connection
    error_after_generate_rate: float = 0.0  # generate (credits spent), then answer 500
    reports_listing_down: bool = False  # GET /reports/ answers 503
    dashboards: list[str] = field(
        default_factory=lambda: [
            "550e8400-e29b-41d4-a716-446655440020",
            "550e8400-e29b-41d4-a716-446655440021",
        ]
    )


class ClariBISimulator:
    def __init__(
        self, config: ClariBISimConfig | None = None, faults: Faults | None = None
    ) -> None:
        self.config = config or ClariBISimConfig()
        self.faults = faults or Faults()
        self.reports: dict[str, Report] = {}
        self.refreshes: dict[str, list[float]] = {}
        self._ids = itertools.count(1)
        self._general = RateWindow()
        self._generation = RateWindow()
        self.stats: dict[str, int] = {
            "generated": 0,
            "refreshed": 0,
            "downloads": 0,
            "payment_required": 0,
            "rate_limited": 0,
            "forbidden": 0,
            "max_generations_in_window": 0,
        }

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._gate, make_middleware(self.faults, error_body=self._fault_body)]
        )
        app.router.add_get("/auth/verify/", self.verify)
        app.router.add_get("/usage/", self.usage)
        app.router.add_get("/reports/", self.list_reports)
        app.router.add_post("/reports/generate/", self.generate)
        app.router.add_get("/reports/{id}/", self.report)
        app.router.add_get("/reports/{id}/download/", self.download)
        app.router.add_get("/dashboards/", self.list_dashboards)
        app.router.add_post("/dashboards/{id}/refresh/", self.refresh)
        app.router.add_get("/_sim/stats", self.sim_stats)
        add_request_log(app, self.faults)
        app.router.add_post("/_sim/config", self.sim_config)
        return app

    @staticmethod
    def _fault_body(status: int) -> dict[str, Any]:
        if status == 429:
            return {"error": "Rate limit exceeded", "message": "Too many requests"}
        return {"error": "Internal Server Error", "message": "An unexpected error occurred"}

    def _limits(self) -> tuple[int, int]:
        general, generation = TIER_LIMITS.get(self.config.tier, TIER_LIMITS["trial"])
        return (
            self.config.general_limit or general,
            self.config.generation_limit or generation,
        )

    # --- auth, permissions and the per-key windows ----------------------------------------------
    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if "/_sim/" in request.path:
            answer: web.StreamResponse = await handler(request)
            return answer
        key = bearer(request)
        if not key.startswith("claribi_") or (
            self.config.api_key is not None and key != self.config.api_key
        ):
            return web.json_response(
                {"error": "Unauthorized", "message": "Invalid, missing, or expired API key"},
                status=401,
            )
        general_limit, generation_limit = self._limits()
        generating = request.method == "POST"
        used, limit = (
            (self._generation, generation_limit) if generating else (self._general, general_limit)
        )
        fits, headers = used.take(time.time(), limit, self.config.window)
        if not fits:
            self.stats["rate_limited"] += 1
            return web.json_response(
                {"error": "Rate limit exceeded", "message": f"Limit of {limit} reached"},
                status=429,
                headers=headers,
            )
        if generating:
            self.stats["max_generations_in_window"] = max(
                self.stats["max_generations_in_window"], len(used.times)
            )
        resp: web.StreamResponse = await handler(request)
        resp.headers.update(headers)
        return resp

    def _need(self, permission: str) -> web.Response | None:
        if permission in self.config.permissions:
            return None
        self.stats["forbidden"] += 1
        return web.json_response(
            {
                "error": "Forbidden",
                "message": f"API key lacks required permission: {permission}",
                "required_permission": permission,
            },
            status=403,
        )

    async def verify(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "valid": True,
                "api_key": {
                    "id": "550e8400-e29b-41d4-a716-446655440000",
                    "name": "orchestrator",
                    "permissions": self.config.permissions,
                    "created_at": "2025-01-01T00:00:00Z",
                    "expires_at": None,
                },
                "organization": {
                    "id": "550e8400-e29b-41d4-a716-446655440001",
                    "name": "Acme Corp",
                    "tier": self.config.tier,
                },
                "user": {"id": "550e8400-e29b-41d4-a716-446655440002", "email": "ops@example.com"},
            }
        )

    def _remaining(self) -> int:
        return max(0, self.config.credits_limit - self.config.credits_used)

    async def usage(self, request: web.Request) -> web.Response:
        if (denied := self._need("usage:read")) is not None:
            return denied
        c = self.config
        return web.json_response(
            {
                "credits": {
                    "used": c.credits_used,
                    "limit": c.credits_limit,
                    "remaining": self._remaining(),
                    "percentage_used": round(100 * c.credits_used / max(1, c.credits_limit), 1),
                },
                "tier": c.tier,
            }
        )

    def _short(self, cost: int) -> web.Response | None:
        have = self._remaining()
        if have >= cost:
            return None
        self.stats["payment_required"] += 1
        return web.json_response(
            {
                "error": "Insufficient credits",
                "message": f"Insufficient credits. Need ~{cost}, have {have}",
                "credits_remaining": have,
                "estimated_cost": cost,
            },
            status=402,
        )

    # --- reports --------------------------------------------------------------------------------
    def _summary(self, r: Report) -> dict[str, Any]:
        return {
            "id": r.id,
            "title": r.title,
            "status": "completed",
            "output_format": r.output_format,
            "created_at": _iso(r.created),
            "generation_completed_at": _iso(r.completed),
            "processing_credits_used": r.credits,
        }

    async def list_reports(self, request: web.Request) -> web.Response:
        if (denied := self._need("reports:read")) is not None:
            return denied
        if self.config.reports_listing_down:
            return web.json_response(
                {"error": "Service Unavailable", "message": "try later"}, status=503
            )
        try:
            page = int(request.query.get("page", "1"))
            size = int(request.query.get("page_size", "20"))
        except ValueError:
            return web.json_response({"error": "Bad Request", "message": "bad paging"}, status=400)
        if page < 1 or not 1 <= size <= 100:
            return web.json_response({"error": "Bad Request", "message": "bad paging"}, status=400)
        items = sorted(self.reports.values(), key=lambda r: r.created, reverse=True)
        chunk = items[(page - 1) * size : page * size]
        base = str(request.url.with_query({}))
        more = page * size < len(items)
        return web.json_response(
            {
                "count": len(items),
                "next": f"{base}?page={page + 1}&page_size={size}" if more else None,
                "previous": f"{base}?page={page - 1}&page_size={size}" if page > 1 else None,
                "results": [self._summary(r) for r in chunk],
            }
        )

    async def generate(self, request: web.Request) -> web.StreamResponse:
        if (denied := self._need("reports:generate")) is not None:
            return denied
        try:
            body = await request.json()
        except ValueError:
            body = None
        problems = []
        if not isinstance(body, dict):
            body, problems = {}, ["body must be a JSON object"]
        for name in ("template_id",):
            try:
                uuid.UUID(str(body.get(name)))
            except ValueError:
                problems.append(f"{name} must be a UUID")
        sources = body.get("data_source_ids")
        if not isinstance(sources, list) or not sources:
            problems.append("data_source_ids must be a non-empty array of UUIDs")
        fmt = body.get("output_format", "pdf")
        if fmt not in FORMATS:
            problems.append(f"output_format must be one of {', '.join(FORMATS)}")
        if problems:
            return web.json_response(
                {"error": "Validation error", "message": "; ".join(problems)}, status=400
            )
        cost = self.config.report_cost
        if (short := self._short(cost)) is not None:
            return short
        started = time.time()
        await asyncio.sleep(self.config.generation_seconds)
        rid = str(uuid.UUID(int=(int(started * 1000) << 64) | next(self._ids)))
        report = Report(
            id=rid,
            title="Executive Summary Report",
            output_format=str(fmt),
            created=started,
            completed=time.time(),
            credits=cost,
            template=str(body["template_id"]),
            data_sources=[str(s) for s in sources or []],
            body=body,
        )
        self.reports[rid] = report
        self.config.credits_used += cost
        self.stats["generated"] += 1
        if self.faults.roll(self.config.lost_answer_rate):
            self.faults.counts["lost_answer"] += 1
            return drop(request)
        if self.faults.roll(self.config.error_after_generate_rate):
            self.faults.counts["error_after_generate"] += 1
            return web.json_response(
                {"error": "Internal Server Error", "message": "Something went wrong"}, status=500
            )
        return web.json_response(
            {
                "success": True,
                "report_id": rid,
                "title": report.title,
                "status": "completed",
                "output_format": report.output_format,
                "download_url": f"/api/v1/reports/{rid}/download/",
                "credits_consumed": cost,
                "generation_duration_seconds": round(report.completed - started),
            },
            status=201,
        )

    def _report(self, request: web.Request) -> Report | web.Response:
        r = self.reports.get(request.match_info["id"])
        if r is None:
            return web.json_response(
                {"error": "Not Found", "message": "Report not found"}, status=404
            )
        return r

    async def report(self, request: web.Request) -> web.Response:
        if (denied := self._need("reports:read")) is not None:
            return denied
        r = self._report(request)
        if isinstance(r, web.Response):
            return r
        sources = [{"id": s, "name": f"Source {s[:8]}", "type": "database"} for s in r.data_sources]
        return web.json_response(
            {**self._summary(r), "template": r.template, "data_sources": sources}
        )

    def content(self, r: Report) -> tuple[bytes, str]:
        rows = [("region", "revenue"), ("EMEA", "1200"), ("AMER", "3400"), ("APAC", "800")]
        if r.output_format == "csv":
            return ("\n".join(",".join(x) for x in rows) + "\n").encode(), "text/csv"
        if r.output_format == "json":
            data = {
                "report_id": r.id,
                "rows": [dict(zip(rows[0], x, strict=True)) for x in rows[1:]],
            }
            return json.dumps(data).encode(), "application/json"
        if r.output_format == "html":
            return f"<html><body><h1>{r.title}</h1></body></html>".encode(), "text/html"
        if r.output_format == "excel":
            from orchestrator.simulator.claro import xlsx_bytes

            return xlsx_bytes([list(x) for x in rows]), (
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
            )
        return b"%PDF-1.4\n% simulated report " + r.id.encode() + b"\n%%EOF\n", "application/pdf"

    async def download(self, request: web.Request) -> web.StreamResponse:
        if (denied := self._need("reports:read")) is not None:
            return denied
        r = self._report(request)
        if isinstance(r, web.Response):
            return r
        self.stats["downloads"] += 1
        data, ctype = self.content(r)
        ext = {"excel": "xlsx"}.get(r.output_format, r.output_format)
        return web.Response(
            body=data,
            content_type=ctype,
            headers={"Content-Disposition": f'attachment; filename="report-{r.id}.{ext}"'},
        )

    # --- dashboards -----------------------------------------------------------------------------
    async def list_dashboards(self, request: web.Request) -> web.Response:
        if (denied := self._need("dashboards:read")) is not None:
            return denied
        results = []
        for i, d in enumerate(self.config.dashboards):
            last = self.refreshes.get(d, [])
            results.append(
                {
                    "id": d,
                    "name": f"Dashboard {i + 1}",
                    "description": "Key metrics",
                    "status": "active",
                    "niche_domain": "ecommerce",
                    "widget_count": 8,
                    "last_refresh": _iso(last[-1]) if last else "2025-01-13T09:00:00Z",
                    "created_at": "2025-01-01T00:00:00Z",
                }
            )
        return web.json_response(
            {"count": len(results), "next": None, "previous": None, "results": results}
        )

    async def refresh(self, request: web.Request) -> web.StreamResponse:
        if (denied := self._need("dashboards:refresh")) is not None:
            return denied
        dashboard = request.match_info["id"]
        if dashboard not in self.config.dashboards:
            return web.json_response(
                {"error": "Not Found", "message": "Dashboard not found"}, status=404
            )
        cost = self.config.refresh_cost
        if (short := self._short(cost)) is not None:
            return short
        await asyncio.sleep(self.config.generation_seconds)
        now = time.time()
        self.refreshes.setdefault(dashboard, []).append(now)
        self.config.credits_used += cost
        self.stats["refreshed"] += 1
        if self.faults.roll(self.config.lost_answer_rate):
            self.faults.counts["lost_answer"] += 1
            return drop(request)
        return web.json_response(
            {
                "success": True,
                "message": "Dashboard data refreshed successfully",
                "dashboard_id": dashboard,
                "job_id": str(uuid.uuid4()),
                "credits_consumed": cost,
                "widgets_created": 0,
                "widgets_updated": 8,
                "last_refresh": _iso(now),
            }
        )

    # --- control --------------------------------------------------------------------------------
    async def sim_stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                **self.stats,
                "credits_used": self.config.credits_used,
                "faults": dict(self.faults.counts),
            }
        )

    async def sim_config(self, request: web.Request) -> web.Response:
        return await apply_sim_config(request, self.config, self.faults)
