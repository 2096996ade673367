"""The daemon's HTTP status server (aiohttp), bound to 127.0.0.1 by default:
/healthz (alive), /readyz (ledger reachable and migrated, scheduler running), /metrics
(Prometheus text), /api/jobs (the JSON of `jobs list --json`, paginated with limit/offset).

What it serves holds job params, file paths and provider errors, so beyond the probes it answers
only requests addressed to it by name (the `Host` header: the bind address, or `[web]
allowed_hosts`; a web page that rebinds its own DNS name to 127.0.0.1 gets 421), and, with
`[web] token_file`, only requests that carry the token. Every answer forbids framing, sniffing,
scripts and referrers."""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import hdrs, web

from orchestrator import statuspage
from orchestrator.config import is_loopback
from orchestrator.domain import IN_FLIGHT, JobState
from orchestrator.ledger import migrate
from orchestrator.ledger.store import job_to_dict
from orchestrator.pipelines import schedule_in_words, statuses
from orchestrator.quota import quota_left
from orchestrator.replicas import report as replica_report

if TYPE_CHECKING:
    from orchestrator.engine.daemon import Daemon

log = structlog.get_logger(__name__)
MAX_PAGE = 1000
PROBES = frozenset({"/healthz", "/readyz"})  # open to any Host and without the token
SECURITY_HEADERS = {
    # The page is server-rendered with inline CSS and no script at all.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_WILDCARDS = ("", "0.0.0.0", "::")  # noqa: S104 (recognised, not bound)
_CHALLENGES = ('Bearer realm="orchestrator"', 'Basic realm="orchestrator", charset="UTF-8"')
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _host_name(header: str) -> str:
    """The host of a Host header, without port, brackets or trailing dot, lower case."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else ""
    if header.count(":") == 1:
        header = header.split(":", 1)[0]
    return header.rstrip(".")


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def host_allowed(header: str | None, bind: str, allowed: Sequence[str] = ()) -> bool:
    """Whether a request's Host header names this server: a name in `allowed` ("*": any);
    bound to a wildcard, any IP address or localhost (a page's origin can never be an address
    literal it did not load from); bound to loopback, a loopback address or localhost; else the
    bind address itself."""
    if "*" in allowed:
        return True
    if not header:
        return False
    host = _host_name(header)
    if not host:
        return False
    if host in allowed:
        return True
    ip = _ip(host)
    if bind in _WILDCARDS:
        return ip is not None or host == "localhost"
    if is_loopback(bind):
        return is_loopback(host)
    bind_ip = _ip(bind.strip("[]"))
    return ip == bind_ip if bind_ip is not None else host == bind.lower().rstrip(".")


def token_matches(authorization: str | None, token: str) -> bool:
    """`Bearer <token>`, or Basic auth with the token as password (what a browser can send).
    Compared in constant time."""
    scheme, _, value = (authorization or "").strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "basic":
        try:
            value = base64.b64decode(value, validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return False
    elif scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.encode(), token.encode())


class StatusServer:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._bind = daemon.cfg.web.host
        self._token: str | None = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        app.on_response_prepare.append(_security_headers)
        app.router.add_get("/", self.index)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/api/jobs", self.api_jobs)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PROBES:
            return await handler(request)
        allowed = self.daemon.cfg.web.allowed_hosts
        if not host_allowed(request.headers.get(hdrs.HOST), self._bind, allowed):
            return web.Response(status=421, text="421: this server is not known by that name\n")
        if self._token is not None and not token_matches(
            request.headers.get(hdrs.AUTHORIZATION), self._token
        ):
            denied = web.Response(status=401, text="401: token required\n")
            for challenge in _CHALLENGES:  # one header each: browsers then offer Basic
                denied.headers.add(hdrs.WWW_AUTHENTICATE, challenge)
            return denied
        return await handler(request)

    async def start(self, host: str, port: int) -> None:
        self._bind = host
        self._token = self.daemon.cfg.web.token()
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.port = int(self._runner.addresses[0][1])
        log.info("status_server_started", url=f"http://{host}:{self.port}/")
        if self._token is None and not is_loopback(host):
            log.warning(
                "status_server_without_token",
                host=host,
                hint="job params, paths and errors are readable by anyone who can reach it: "
                "set [web] token_file, or bind to 127.0.0.1",
            )

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
                "provider_left": b.remote.available_quota if b.remote else None,
                "provider_limit": b.remote.monthly_quota if b.remote else None,
            }
            for name, b in d.ctx.budgets.items()
        }
        progress = await d.ledger.part_progress([j.id for j in in_flight])
        tz = d.cfg.daemon.timezone
        pipelines = [
            {**s.to_dict(), "schedule_words": schedule_in_words(s.config.schedule, tz)}
            for s in await statuses(d.cfg, d.ledger)
        ]
        imports = await d.ledger.import_progress([j.id for j in in_flight])
        replicas = await replica_report(d.ledger, d.ownership.times)
        html = statuspage.render(
            counts=counts,
            jobs=jobs,
            budgets=budgets,
            title="orchestrator",
            progress=progress,
            pipelines=pipelines,
            imports=imports,
            replicas=replicas,
            replica=d.ownership.me.id,
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
                "left": quota_left(budget),
                "reserve": budget.caps.reserve,
            }
        snapshot["pipelines"] = [s.metric_row() for s in await statuses(d.cfg, d.ledger)]
        snapshot["replica"] = {
            "id": d.ownership.me.id,
            "host": d.ownership.me.host,
            "held": sorted(d.ownership.held),
            "accounts": d.ownership.accounts,
            "leader": d.ownership.leader,
            "live": d.ownership.live,
            "takeovers": d.ownership.takeovers,
        }
        d.ctx.metrics.snapshot = snapshot
        return web.Response(
            body=d.ctx.metrics.render(),
            content_type="text/plain",
            charset="utf-8",
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


async def _security_headers(_: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)
