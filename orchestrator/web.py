"""The daemon's HTTP status server (aiohttp), bound to 127.0.0.1 by default:
/healthz (alive), /readyz (ledger reachable and migrated, scheduler running), /metrics
(Prometheus text), /api/jobs (the JSON of `jobs list --json`, paginated with limit/offset)."""

from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from orchestrator import statuspage
from orchestrator.domain import IN_FLIGHT, JobState
from orchestrator.ledger import migrate
from orchestrator.ledger.store import job_to_dict

if TYPE_CHECKING:
    from orchestrator.engine.daemon import Daemon

log = structlog.get_logger(__name__)
MAX_PAGE = 1000


class StatusServer:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.port = 0
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.index)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/api/jobs", self.api_jobs)
        return app

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.port = int(self._runner.addresses[0][1])
        log.info("status_server_started", url=f"http://{host}:{self.port}/")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def index(self, _: web.Request) -> web.Response:
        d = self.daemon
        counts = await d.ledger.counts_by_state()
        in_flight = await d.ledger.list_jobs(states=sorted(IN_FLIGHT))
        recent = await d.ledger.list_jobs(limit=500)
        seen = {j.id for j in in_flight}
        jobs = in_flight + [j for j in recent if j.id not in seen]
        budgets = {
            name: {
                "quota_used": b.used,
                "quota_limit": b.quota_limit(),
                "in_flight": b.in_flight,
                "concurrency_limit": b.concurrency_limit(),
            }
            for name, b in d.ctx.budgets.items()
        }
        progress = await d.ledger.part_progress([j.id for j in in_flight])
        imports = await d.ledger.import_progress([j.id for j in in_flight])
        html = statuspage.render(
            counts=counts,
            jobs=jobs,
            budgets=budgets,
            title="orchestrator",
            progress=progress,
            imports=imports,
        )
        return web.Response(text=html, content_type="text/html")

    async def healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, _: web.Request) -> web.Response:
        d = self.daemon
        checks = {
            "started": d.ready.is_set(),
            "ledger": await d.ledger.ping(),
            "migrated": False,
            "scheduler": d.scheduler.running or d.exit_when_idle,
            "stopping": d.ctx.stopping.is_set(),
        }
        if checks["ledger"]:
            try:
                checks["migrated"] = await migrate.is_current(d.ledger)
            except Exception:
                checks["migrated"] = False
        ok = all(checks[k] for k in ("started", "ledger", "migrated", "scheduler"))
        ok = ok and not checks["stopping"]
        return web.json_response({"ready": ok, **checks}, status=200 if ok else 503)

    async def metrics(self, _: web.Request) -> web.Response:
        d = self.daemon
        snapshot: dict[str, Any] = {
            "jobs": await d.ledger.counts_by_kind(),
            "http": {},
            "budgets": {},
        }
        http: Counter[tuple[str, int]] = Counter()
        for name, adapter in d.ctx.adapters.items():
            client = getattr(adapter, "http", None)
            for status, n in getattr(client, "status_counts", {}).items():
                http[(name, status)] += n
        snapshot["http"] = dict(http)
        for name, budget in d.ctx.budgets.items():
            snapshot["budgets"][name] = {
                "free_quota": budget.free_quota(),
                "in_flight": budget.in_flight,
                "limit": budget.concurrency_limit(),
            }
        d.ctx.metrics.snapshot = snapshot
        return web.Response(
            body=d.ctx.metrics.render(),
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    async def api_jobs(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            limit = min(MAX_PAGE, max(1, int(q.get("limit", "100"))))
            offset = max(0, int(q.get("offset", "0")))
            states = [JobState(s.upper()) for s in q.getall("state", [])] or None
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        jobs = await self.daemon.ledger.list_jobs(
            states=states, pipeline=q.get("pipeline"), limit=limit, offset=offset
        )
        headers = {"X-Next-Offset": str(offset + limit)} if len(jobs) == limit else {}
        imports = await self.daemon.ledger.import_progress([j.id for j in jobs])
        out = []
        for j in jobs:
            row = job_to_dict(j)
            if j.id in imports:  # imports: rows validated, sent, confirmed, rejected; ETA
                row["import"] = imports[j.id].to_dict()
            out.append(row)
        return web.Response(
            text=json.dumps(out),
            content_type="application/json",
            headers=headers,
        )
