"""Claravine API simulator (api-docs/claravine-api.txt): datasets (templates) with their fields,
submissions of at most 1,000 rows (`POST {dataset}/data` with transactionName, fields, rows) that
stay Pending for a while and then turn Complete or Failed — Failed *silently*, only the status
endpoint tells, when a governance rule is broken (a required field left empty, a field the
template does not have, a value outside a picklist). Transactions listed by date window, data only
for Complete ones. API key + secret in two headers whose names are configurable, like ours.
Misbehaves on request: shared Faults plus submissions whose answer is lost after they were made."""

from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from aiohttp import web

from orchestrator.simulator.faults import (
    Faults,
    add_request_log,
    apply_sim_config,
    drop,
    make_middleware,
)

MAX_ROWS = 1000


@dataclass(kw_only=True)
class Template:
    uuid: str
    name: str
    fields: list[str]
    required: list[str] = field(default_factory=list)
    picklists: dict[str, list[str]] = field(default_factory=dict)


@dataclass(kw_only=True)
class Transaction:
    uuid: str
    name: str
    dataset: str
    fields: list[str]
    rows: list[list[str]]
    created: float
    ready_at: float
    errors: list[dict[str, Any]]

    def status(self, now: float) -> str:
        if now < self.ready_at:
            return "Pending"
        return "Failed" if self.errors else "Complete"

    def summary(self, now: float) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "transactionName": self.name,
            "status": self.status(now),
            "rowCount": len(self.rows),
            "createdAt": datetime.fromtimestamp(self.created, UTC)
            .isoformat()
            .replace("+00:00", "Z"),
        }


CAMPAIGN_FIELDS = [
    "Campaign Name",
    "Site ID",
    "Audience Target",
    "Brand vs Demand Gen",
    "Budget Owner",
    "Launch Month",
]


@dataclass(kw_only=True)
class ClaravineSimConfig:
    api_key: str | None = None
    api_secret: str | None = None
    key_header: str = "X-API-Key"
    secret_header: str = "X-API-Secret"  # noqa: S105 (a header name, not a secret)
    processing_time: float = 0.2  # seconds a submission stays Pending
    lost_submit_rate: float = 0.0  # make the transaction, then drop the connection
    publish_fields: bool = True  # GET /datasets shows each template's fields
    templates: list[Template] = field(
        default_factory=lambda: [
            Template(
                uuid="4f1c2a9e-0000-4000-8000-000000000001",
                name="Campaign Taxonomy",
                fields=list(CAMPAIGN_FIELDS),
                required=["Campaign Name", "Budget Owner"],
                picklists={"Brand vs Demand Gen": ["Brand", "Demand Gen"]},
            )
        ]
    )


class ClaravineSimulator:
    def __init__(
        self, config: ClaravineSimConfig | None = None, faults: Faults | None = None
    ) -> None:
        self.config = config or ClaravineSimConfig()
        self.faults = faults or Faults()
        self.transactions: dict[str, Transaction] = {}
        self._ids = itertools.count(1)
        self.stats: dict[str, int] = {
            "posts": 0,
            "rows_received": 0,
            "status_requests": 0,
            "list_requests": 0,
            "data_requests": 0,
            "rejected": 0,
        }
        self.names_posted: list[str] = []

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._auth, make_middleware(self.faults, error_body=self._fault_body)]
        )
        app.router.add_get("/datasets", self.list_datasets)
        app.router.add_post("/{dataset}/data", self.post_data)
        app.router.add_get("/{dataset}/transactions", self.list_transactions)
        app.router.add_get("/{dataset}/transactions/", self.list_transactions)
        app.router.add_get("/{dataset}/transactions/{uuid}/status/", self.status)
        app.router.add_get("/{dataset}/transactions/{uuid}/status", self.status)
        app.router.add_get("/{dataset}/transaction/{uuid}/data/", self.data)
        app.router.add_get("/{dataset}/transaction/{uuid}/data", self.data)
        app.router.add_get("/_sim/stats", self.sim_stats)
        add_request_log(app, self.faults)
        app.router.add_post("/_sim/config", self.sim_config)
        return app

    @staticmethod
    def _fault_body(status: int) -> dict[str, Any]:
        return {"message": "Too Many Requests" if status == 429 else "Internal Server Error"}

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if "/_sim/" not in request.path:
            c = self.config
            key = request.headers.get(c.key_header)
            secret = request.headers.get(c.secret_header)
            if (
                not key
                or not secret
                or (c.api_key is not None and key != c.api_key)
                or (c.api_secret is not None and secret != c.api_secret)
            ):
                return web.json_response({"message": "Unauthorized"}, status=401)
        resp: web.StreamResponse = await handler(request)
        return resp

    def template(self, dataset: str) -> Template | None:
        return next((t for t in self.config.templates if t.uuid == dataset), None)

    def _lookup(self, request: web.Request) -> Template | web.Response:
        t = self.template(request.match_info["dataset"])
        if t is None:
            return web.json_response({"message": "Dataset not found"}, status=404)
        return t

    async def list_datasets(self, request: web.Request) -> web.Response:
        out = []
        for t in self.config.templates:
            item: dict[str, Any] = {"uuid": t.uuid, "name": t.name}
            if self.config.publish_fields:
                item["fields"] = t.fields
            out.append(item)
        return web.json_response({"datasets": out})

    # --- submissions --------------------------------------------------------------------------
    def governance(
        self, t: Template, names: list[str], rows: list[list[Any]]
    ) -> list[dict[str, Any]]:
        """The template's rules; any broken one fails the whole submission (silently)."""
        errors: list[dict[str, Any]] = []
        unknown = [f for f in names if f not in t.fields]
        if unknown:
            errors.append({"row": None, "field": unknown[0], "message": "unknown field"})
        for i, row in enumerate(rows, start=1):
            values = dict(zip(names, row, strict=False))
            errors.extend(
                {"row": i, "field": req, "message": "required field is empty"}
                for req in t.required
                if not str(values.get(req, "") or "").strip()
            )
            for name, allowed in t.picklists.items():
                v = values.get(name)
                if v not in (None, "") and v not in allowed:
                    errors.append(
                        {"row": i, "field": name, "message": f"{v!r} is not an allowed value"}
                    )
        return errors

    async def post_data(self, request: web.Request) -> web.StreamResponse:
        t = self._lookup(request)
        if isinstance(t, web.Response):
            return t
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return web.json_response({"message": "Body must be a JSON object"}, status=400)
        name, names, rows = body.get("transactionName"), body.get("fields"), body.get("rows")
        if not isinstance(names, list) or not isinstance(rows, list):
            return web.json_response({"message": "fields and rows are required"}, status=400)
        if len(rows) > MAX_ROWS:
            self.stats["rejected"] += 1
            return web.json_response(
                {"message": f"A maximum of {MAX_ROWS} rows is allowed per POST request"},
                status=400,
            )
        if any(not isinstance(r, list) for r in rows):
            return web.json_response({"message": "rows must be arrays of values"}, status=400)
        now = time.time()
        tx = Transaction(
            uuid=str(uuid.UUID(int=(int(now * 1000) << 64) | next(self._ids))),
            name=str(name or ""),
            dataset=t.uuid,
            fields=[str(n) for n in names],
            rows=[[("" if v is None else str(v)) for v in r] for r in rows],
            created=now,
            ready_at=now + self.config.processing_time,
            errors=self.governance(t, names, rows),
        )
        self.transactions[tx.uuid] = tx
        self.stats["posts"] += 1
        self.stats["rows_received"] += len(rows)
        self.names_posted.append(tx.name)
        if self.faults.roll(self.config.lost_submit_rate):
            self.faults.counts["lost_submit"] += 1
            return drop(request)
        return web.json_response(
            {"transactionUuid": tx.uuid, "transactionName": tx.name, "status": "Pending"},
            status=201,
        )

    async def list_transactions(self, request: web.Request) -> web.Response:
        t = self._lookup(request)
        if isinstance(t, web.Response):
            return t
        self.stats["list_requests"] += 1
        try:
            start = date.fromisoformat(request.query.get("start-date", "1970-01-01"))
            end = date.fromisoformat(request.query.get("end-date", "9999-12-31"))
        except ValueError:
            return web.json_response({"message": "Dates must look like 2023-03-01"}, status=400)
        now = time.time()
        out = [
            tx.summary(now)
            for tx in self.transactions.values()
            if tx.dataset == t.uuid
            and start <= datetime.fromtimestamp(tx.created, UTC).date() <= end
        ]
        return web.json_response({"transactions": out})

    def _tx(self, request: web.Request) -> Transaction | web.Response:
        t = self._lookup(request)
        if isinstance(t, web.Response):
            return t
        tx = self.transactions.get(request.match_info["uuid"])
        if tx is None or tx.dataset != t.uuid:
            return web.json_response({"message": "Transaction not found"}, status=404)
        return tx

    async def status(self, request: web.Request) -> web.Response:
        tx = self._tx(request)
        if isinstance(tx, web.Response):
            return tx
        self.stats["status_requests"] += 1
        status = tx.status(time.time())
        body: dict[str, Any] = {"uuid": tx.uuid, "transactionName": tx.name, "status": status}
        if status == "Failed":
            body["errors"] = tx.errors[:50]
        return web.json_response(body)

    async def data(self, request: web.Request) -> web.Response:
        tx = self._tx(request)
        if isinstance(tx, web.Response):
            return tx
        self.stats["data_requests"] += 1
        if tx.status(time.time()) != "Complete":
            return web.json_response(
                {"message": "Data is only available for Complete transactions"}, status=400
            )
        return web.json_response({"header": tx.fields, "rows": tx.rows})

    # --- control --------------------------------------------------------------------------------
    async def sim_stats(self, request: web.Request) -> web.Response:
        names = self.names_posted
        return web.json_response(
            {
                **self.stats,
                "duplicate_names": len(names) - len(set(names)),
                "faults": dict(self.faults.counts),
            }
        )

    async def sim_config(self, request: web.Request) -> web.Response:
        return await apply_sim_config(request, self.config, self.faults, frozenset({"templates"}))
