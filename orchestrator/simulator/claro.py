"""Claro API simulator (api-docs/claro-api.txt): datasets with columns and N deterministic rows,
paged listing with type/status filters, paged data, and exports that answer with a download URL
the simulator itself serves until `expiresIn` runs out. Error codes as documented
(UNAUTHORIZED, DATASET_NOT_FOUND, COLUMN_NOT_FOUND, PROCESSING_IN_PROGRESS, INVALID_PARAMETERS,
ACCESS_DENIED), X-RateLimit-* headers on every answer and 429 past the per-minute limit.
Misbehaves on request: shared Faults, downloads that drop half way, datasets still processing."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math
import secrets
import time
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape

from aiohttp import web

from orchestrator.simulator.faults import (
    Faults,
    add_request_log,
    apply_sim_config,
    bearer,
    make_middleware,
)

FORMATS = ("csv", "json", "xlsx")
MAX_EXPORT_ROWS = 100_000
MAX_EXPIRES = 86_400
TYPES = ("extraction", "analysis", "classification")
STATUSES = ("processing", "completed", "failed")
CATEGORIES = ("Hardware", "Software", "Services", "Accessories")


@dataclass(kw_only=True)
class ClaroDataset:
    id: str
    name: str
    rows: int
    type: str = "analysis"
    status: str = "completed"
    ready_at: float = 0.0  # while time < ready_at the dataset reports "processing"
    denied: bool = False  # the token may not read it (ACCESS_DENIED)
    created: str = "2026-11-01T09:00:00Z"

    def status_now(self, now: float) -> str:
        return "processing" if now < self.ready_at else self.status

    def columns(self) -> list[dict[str, str]]:
        return [
            {"id": "col_1", "name": "product_id", "taskType": "raw"},
            {"id": "col_2", "name": "product_name", "taskType": "raw"},
            {"id": "col_3", "name": "category", "taskType": "classification"},
            {"id": "col_4", "name": "price", "taskType": "web_enrich"},
        ]

    def row(self, i: int) -> list[str]:
        """Row i, deterministic; some names carry a comma and quotes (CSV quoting is tested)."""
        name = f'Widget {i}, "large"' if i % 7 == 0 else f"Widget {i}"
        return [
            f"{self.id}-P{i:07d}",
            name,
            CATEGORIES[i % len(CATEGORIES)],
            f"{(i * 37) % 10000 / 100:.2f}",
        ]


@dataclass(kw_only=True)
class ClaroSimConfig:
    api_key: str | None = None  # None: any non-empty bearer token is accepted
    rate_limit: int = 100  # requests per window per token
    rate_window: float = 60.0
    download_drop_rate: float = 0.0
    expired_urls: int = 0  # the next N export URLs are already expired when issued (clock skew)
    datasets: list[ClaroDataset] = field(
        default_factory=lambda: [
            ClaroDataset(id="ds_products", name="Products", rows=1_200),
            ClaroDataset(id="ds_small", name="Small", rows=25, type="classification"),
        ]
    )


@dataclass(kw_only=True)
class Export:
    token: str
    dataset: ClaroDataset
    fmt: str
    skip: int
    count: int
    column_ids: list[str]
    metadata: bool
    expires: float
    downloads: int = 0


def _err(code: str, message: str) -> dict[str, Any]:
    return {"success": False, "error": {"code": code, "message": message}}


def _fail(status: int, code: str, message: str) -> web.Response:
    return web.json_response(_err(code, message), status=status)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


class ClaroSimulator:
    def __init__(self, config: ClaroSimConfig | None = None, faults: Faults | None = None) -> None:
        self.config = config or ClaroSimConfig()
        self.faults = faults or Faults()
        self.exports: dict[str, Export] = {}
        self._window: tuple[float, int] = (0.0, 0)
        self.stats: dict[str, int] = {
            "exports": 0,
            "downloads": 0,
            "downloads_expired": 0,
            "rate_limited": 0,
            "max_in_window": 0,
            "processing_refusals": 0,
        }

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[
                self._rate_limit,
                make_middleware(self.faults, error_body=self._fault_body),
            ]
        )
        app.router.add_get("/datasets", self.list_datasets)
        app.router.add_get("/datasets/{id}", self.get_dataset)
        app.router.add_get("/datasets/{id}/data", self.get_data)
        app.router.add_post("/datasets/{id}/export", self.export)
        app.router.add_get("/_files/{token}", self.download)
        app.router.add_get("/_sim/stats", self.sim_stats)
        add_request_log(app, self.faults)
        app.router.add_post("/_sim/config", self.sim_config)
        app.router.add_post("/_sim/datasets", self.sim_datasets)
        return app

    @staticmethod
    def _fault_body(status: int) -> dict[str, Any]:
        if status == 429:
            return _err("RATE_LIMITED", "Too many requests")
        return _err("INTERNAL_ERROR", "An unexpected error occurred")

    def dataset(self, dataset_id: str) -> ClaroDataset | None:
        return next((d for d in self.config.datasets if d.id == dataset_id), None)

    # --- middleware: auth and the per-minute limit (download URLs are pre-signed: no auth) ----
    @web.middleware
    async def _rate_limit(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if "/_sim/" in request.path or "/_files/" in request.path:
            answer: web.StreamResponse = await handler(request)
            return answer
        token = bearer(request)
        if not token or (self.config.api_key is not None and token != self.config.api_key):
            return web.json_response(_err("UNAUTHORIZED", "Authentication required"), status=401)
        now = time.time()
        start, used = self._window
        if now - start >= self.config.rate_window:
            start, used = now, 0
        reset = start + self.config.rate_window
        limit = self.config.rate_limit
        headers = {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Reset": str(math.ceil(reset)),
        }
        if used >= limit:
            self.stats["rate_limited"] += 1
            headers["X-RateLimit-Remaining"] = "0"
            headers["Retry-After"] = str(max(1, math.ceil(reset - now)))
            return web.json_response(
                _err("RATE_LIMITED", f"Rate limit of {limit} requests exceeded"),
                status=429,
                headers=headers,
            )
        used += 1
        self._window = (start, used)
        self.stats["max_in_window"] = max(self.stats["max_in_window"], used)
        headers["X-RateLimit-Remaining"] = str(limit - used)
        resp: web.StreamResponse = await handler(request)
        resp.headers.update(headers)
        return resp

    # --- datasets -----------------------------------------------------------------------------
    def _summary(self, d: ClaroDataset, now: float) -> dict[str, Any]:
        return {
            "id": d.id,
            "name": d.name,
            "type": d.type,
            "status": d.status_now(now),
            "rowCount": d.rows,
            "columnCount": len(d.columns()),
            "createdAt": d.created,
        }

    @staticmethod
    def _int_arg(request: web.Request, name: str, default: int, lo: int, hi: int) -> int | None:
        raw = request.query.get(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            return None
        return value if lo <= value <= hi else None

    async def list_datasets(self, request: web.Request) -> web.Response:
        page = self._int_arg(request, "page", 1, 1, 10**6)
        limit = self._int_arg(request, "limit", 20, 1, 100)
        kind, status = request.query.get("type"), request.query.get("status")
        if page is None or limit is None or kind not in (None, *TYPES):
            return _fail(400, "INVALID_PARAMETERS", "Invalid query parameters")
        if status not in (None, *STATUSES):
            return _fail(400, "INVALID_PARAMETERS", "Invalid query parameters")
        now = time.time()
        items = [
            self._summary(d, now)
            for d in self.config.datasets
            if (kind is None or d.type == kind) and (status is None or d.status_now(now) == status)
        ]
        total = len(items)
        chunk = items[(page - 1) * limit : page * limit]
        return web.json_response(
            {
                "success": True,
                "data": chunk,
                "pagination": {
                    "page": page,
                    "limit": limit,
                    "total": total,
                    "totalPages": max(1, math.ceil(total / limit)),
                },
            }
        )

    def _lookup(self, request: web.Request) -> ClaroDataset | web.Response:
        d = self.dataset(request.match_info["id"])
        if d is None:
            return _fail(404, "DATASET_NOT_FOUND", "Dataset doesn't exist")
        if d.denied:
            return _fail(403, "ACCESS_DENIED", "Insufficient permissions")
        return d

    async def get_dataset(self, request: web.Request) -> web.Response:
        d = self._lookup(request)
        if isinstance(d, web.Response):
            return d
        return web.json_response(
            {"success": True, "data": {**self._summary(d, time.time()), "columns": d.columns()}}
        )

    async def get_data(self, request: web.Request) -> web.Response:
        d = self._lookup(request)
        if isinstance(d, web.Response):
            return d
        page = self._int_arg(request, "page", 1, 1, 10**9)
        limit = self._int_arg(request, "limit", 50, 1, 1000)
        if page is None or limit is None:
            return _fail(400, "INVALID_PARAMETERS", "Invalid query parameters")
        cols = d.columns()
        wanted = request.query.get("columns")
        idx = list(range(len(cols)))
        if wanted:
            ids = [c["id"] for c in cols]
            unknown = [c for c in wanted.split(",") if c not in ids]
            if unknown:
                return _fail(404, "COLUMN_NOT_FOUND", f"Column ID doesn't exist: {unknown[0]}")
            idx = [ids.index(c) for c in wanted.split(",")]
        start = (page - 1) * limit
        rows = [[d.row(i)[j] for j in idx] for i in range(start, min(d.rows, start + limit))]
        return web.json_response(
            {
                "success": True,
                "data": {"columns": [cols[j] for j in idx], "rows": rows},
                "pagination": {
                    "page": page,
                    "limit": limit,
                    "total": d.rows,
                    "totalPages": max(1, math.ceil(d.rows / limit)),
                },
            }
        )

    # --- exports --------------------------------------------------------------------------------
    async def export(self, request: web.Request) -> web.Response:
        d = self._lookup(request)
        if isinstance(d, web.Response):
            return d
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _fail(400, "INVALID_PARAMETERS", "Body must be a JSON object")
        fmt = body.get("format")
        count = body.get("rowCount")
        skip = body.get("skip", 0)
        expires = body.get("expiresIn", 3600)
        problems = []
        if fmt not in FORMATS:
            problems.append("format must be one of csv, json, xlsx")
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 100_000:
            problems.append("rowCount is required, an integer from 1 to 100000")
        if not isinstance(skip, int) or skip < 0:
            problems.append("skip must be a non-negative integer")
        if not isinstance(expires, int) or not 1 <= expires <= MAX_EXPIRES:
            problems.append("expiresIn must be an integer from 1 to 86400")
        if problems:
            return _fail(400, "INVALID_PARAMETERS", "; ".join(problems))
        col_ids = [c["id"] for c in d.columns()]
        wanted = body.get("columnIds") or col_ids
        unknown = [c for c in wanted if c not in col_ids]
        if unknown:
            return _fail(404, "COLUMN_NOT_FOUND", f"Column ID doesn't exist: {unknown[0]}")
        now = time.time()
        if d.status_now(now) == "processing":
            self.stats["processing_refusals"] += 1
            return _fail(409, "PROCESSING_IN_PROGRESS", "Dataset still being processed")
        token = secrets.token_urlsafe(24)
        self.exports[token] = Export(
            token=token,
            dataset=d,
            fmt=str(fmt),
            skip=skip,
            count=int(count or 0),
            column_ids=list(wanted),
            metadata=bool(body.get("includeMetadata", False)),
            expires=now + expires if self.config.expired_urls <= 0 else now - 1,
        )
        self.config.expired_urls = max(0, self.config.expired_urls - 1)
        self.stats["exports"] += 1
        base = str(request.url.with_path(request.path.rsplit("/datasets/", 1)[0]))
        return web.json_response(
            {
                "success": True,
                "data": {
                    "downloadUrl": f"{base}/_files/{token}?signature={secrets.token_hex(16)}",
                    "format": fmt,
                    "rowCount": max(0, min(count, d.rows - skip)),
                    "expiresAt": _iso(now + expires),
                },
            }
        )

    def render(self, e: Export) -> bytes:
        cols = e.dataset.columns()
        ids = [c["id"] for c in cols]
        idx = [ids.index(c) for c in e.column_ids]
        names = [cols[j]["name"] for j in idx]
        rows = [
            [e.dataset.row(i)[j] for j in idx]
            for i in range(e.skip, min(e.dataset.rows, e.skip + e.count))
        ]
        first = e.skip
        if e.fmt == "csv":
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow((["_row_id"] if e.metadata else []) + names)
            for n, r in enumerate(rows):
                w.writerow(([f"row_{first + n}"] if e.metadata else []) + r)
            return buf.getvalue().encode()
        if e.fmt == "json":
            out = []
            for n, r in enumerate(rows):
                obj: dict[str, Any] = dict(zip(names, r, strict=True))
                if e.metadata:
                    obj["_metadata"] = {"rowId": f"row_{first + n}"}
                out.append(obj)
            return json.dumps(out).encode()
        return xlsx_bytes([names, *rows])

    async def download(self, request: web.Request) -> web.StreamResponse:
        e = self.exports.get(request.match_info["token"])
        if e is None:
            return web.json_response(_err("NOT_FOUND", "No such file"), status=404)
        if time.time() >= e.expires:
            self.stats["downloads_expired"] += 1
            return web.Response(
                status=403,
                text="<Error><Code>AccessDenied</Code>"
                "<Message>Request has expired</Message></Error>",
                content_type="application/xml",
            )
        self.stats["downloads"] += 1
        e.downloads += 1
        payload = self.render(e)
        ctype = {
            "csv": "text/csv",
            "json": "application/json",
            "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        }[e.fmt]
        resp = web.StreamResponse(
            headers={"Content-Type": ctype, "Content-Length": str(len(payload))}
        )
        await resp.prepare(request)
        cut = len(payload) // 2 if self.faults.roll(self.config.download_drop_rate) else None
        chunk = 1 << 16
        for start in range(0, len(payload), chunk):
            if cut is not None and start + chunk > cut:
                await resp.write(payload[start:cut])
                self.faults.counts["download_dropped"] += 1
                if request.transport is not None:
                    request.transport.close()
                return resp
            await resp.write(payload[start : start + chunk])
            await asyncio.sleep(0)
        await resp.write_eof()
        return resp

    # --- control --------------------------------------------------------------------------------
    async def sim_stats(self, request: web.Request) -> web.Response:
        return web.json_response({**self.stats, "faults": dict(self.faults.counts)})

    async def sim_config(self, request: web.Request) -> web.Response:
        return await apply_sim_config(request, self.config, self.faults, frozenset({"datasets"}))

    async def sim_datasets(self, request: web.Request) -> web.Response:
        """Add or replace datasets: [{id, name, rows, type?, status?, processing_for?}]."""
        now = time.time()
        for item in await request.json():
            spec = {k: v for k, v in item.items() if k != "processing_for"}
            d = ClaroDataset(**spec, ready_at=now + float(item.get("processing_for", 0)))
            self.config.datasets = [x for x in self.config.datasets if x.id != d.id] + [d]
        return web.json_response({"datasets": [d.id for d in self.config.datasets]})


def xlsx_bytes(rows: list[list[str]]) -> bytes:
    """A minimal valid .xlsx workbook (one sheet, inline strings)."""

    def cell_ref(c: int, r: int) -> str:
        letters = ""
        c += 1
        while c:
            c, rem = divmod(c - 1, 26)
            letters = chr(65 + rem) + letters
        return f"{letters}{r + 1}"

    sheet_rows = "".join(
        f'<row r="{r + 1}">'
        + "".join(
            f'<c r="{cell_ref(c, r)}" t="inlineStr"><is><t>{escape(v)}</t></is></c>'
            for c, v in enumerate(row)
        )
        + "</row>"
        for r, row in enumerate(rows)
    )
    ns = "http://schemas.openxmlformats.org"
    files = {
        "[Content_Types].xml": (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f'<Types xmlns="{ns}/package/2006/content-types">'
            '<Default Extension="rels" ContentType="application/'
            'vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
            '<Override PartName="/xl/workbook.xml" ContentType="application/'
            'vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
            '<Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/'
            'vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/></Types>'
        ),
        "_rels/.rels": (
            f'<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="{ns}/package/2006/'
            f'relationships"><Relationship Id="rId1" Type="{ns}/officeDocument/2006/'
            'relationships/officeDocument" Target="xl/workbook.xml"/></Relationships>'
        ),
        "xl/workbook.xml": (
            f'<?xml version="1.0" encoding="UTF-8"?><workbook xmlns="{ns}/spreadsheetml/2006/'
            f'main" xmlns:r="{ns}/officeDocument/2006/relationships"><sheets>'
            '<sheet name="export" sheetId="1" r:id="rId1"/></sheets></workbook>'
        ),
        "xl/_rels/workbook.xml.rels": (
            f'<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="{ns}/package/2006/'
            f'relationships"><Relationship Id="rId1" Type="{ns}/officeDocument/2006/'
            'relationships/worksheet" Target="worksheets/sheet1.xml"/></Relationships>'
        ),
        "xl/worksheets/sheet1.xml": (
            f'<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="{ns}/spreadsheetml/2006/'
            f'main"><sheetData>{sheet_rows}</sheetData></worksheet>'
        ),
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in files.items():
            z.writestr(name, text)
    return buf.getvalue()
