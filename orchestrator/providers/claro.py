"""Claro dataset exports (api-docs/claro-api.txt).

`POST /datasets/{id}/export` answers at once with a download URL, for at most 100,000 rows from
`skip`. A larger dataset is exported in parts: each part is planned in the ledger (job_parts),
downloaded to a hidden part file and marked DONE with its sha256, so a crash resumes at the first
missing part; when every part is in, they are stitched in order into one result file (one CSV
header; one JSON array; xlsx stays in parts, listed by a manifest).

Download URLs are bearer credentials: never logged, never stored. A URL that fails (expired,
refused) is replaced by a fresh one, and a restarted daemon always asks for fresh ones.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

import structlog
from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchestrator.config import ProviderConfig
from orchestrator.domain import Job, Part, PartState
from orchestrator.errors import BadAnswer, ProviderError, Rejected, RemoteJobFailed, Unavailable
from orchestrator.http import HttpClient
from orchestrator.limits import AccountPace
from orchestrator.outputs import AtomicFile, _fsync_dir, create_new, stitch
from orchestrator.providers.answers import Answer, RemoteId, answer
from orchestrator.providers.base import (
    Params,
    StagedAdapterBase,
    Work,
    expand_list,
    register_kind,
    register_provider,
)
from orchestrator.providers.sources import file_sha256

if TYPE_CHECKING:
    pass

log = structlog.get_logger(__name__)
KIND = "claro.dataset_export"
MAX_ROWS = 100_000  # the API's rowCount limit per export request
URL_TRIES = 4  # fresh download URLs per part before the attempt fails
DOWNLOAD_TRIES = 3  # downloads per URL on transient errors
DEFAULT_RPM = 100.0  # standard plans (vendor's API introduction page)
MAX_PAGES = 1000  # of GET /datasets (100 each): beyond it, the answers are not believed


class DatasetFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["extraction", "analysis", "classification"] | None = None
    status: Literal["processing", "completed", "failed"] | None = "completed"


class DatasetExportParams(Params):
    datasetId: str | None = Field(default=None, min_length=1)
    datasets: list[str] | None = Field(default=None, min_length=1)
    filter: DatasetFilter | None = None
    format: Literal["csv", "json", "xlsx"] = "csv"
    columnIds: list[str] | None = Field(default=None, min_length=1)
    includeMetadata: bool | None = None
    expiresIn: int = Field(default=3600, ge=1, le=86_400)
    # As in the API: rows from `skip`, at most `rowCount` of them (default: to the end; the API
    # wants it in every request, the daemon computes it per part).
    skip: int = Field(default=0, ge=0)
    rowCount: int | None = Field(default=None, ge=1)
    partRows: int = Field(default=MAX_ROWS, ge=1, le=MAX_ROWS)  # ours: rows per export request

    @model_validator(mode="after")
    def _one_source(self) -> DatasetExportParams:
        given = [n for n in ("datasetId", "datasets", "filter") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of datasetId, datasets (a list) or filter "
                f"({{ type, status }}); got {', '.join(given) or 'none'}"
            )
        return self


register_kind(
    KIND,
    DatasetExportParams,
    "Claro dataset export (POST /datasets/{id}/export), in parts of ≤ 100,000 rows",
    staged=True,
    expand=expand_list("datasets", "datasetId"),
)


# --- answers (api-docs/claro-api.txt) ------------------------------------------------------------


class _Unwrap(Answer):
    """Claro wraps answers as `{"success": true, "data": ...}`; also accepted bare."""

    @model_validator(mode="before")
    @classmethod
    def _data(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("data"), dict):
            return data["data"]
        return data


class ClaroPagination(Answer):
    total: int | None = None
    totalPages: int = Field(default=1, ge=1)


class ClaroDatasetItem(Answer):
    id: RemoteId


class ClaroDatasetPage(Answer):
    """`GET /datasets`: `{"data": [...], "pagination": {...}}`."""

    data: list[ClaroDatasetItem]
    pagination: ClaroPagination = ClaroPagination()


class ClaroDataset(_Unwrap):
    """`GET /datasets/{id}`."""

    status: str = "completed"
    rowCount: int = Field(ge=0)


class ClaroExport(_Unwrap):
    """`POST /datasets/{id}/export`."""

    downloadUrl: str = Field(min_length=1)


def plan_parts(job_id: int, total_rows: int, per_part: int, skip: int = 0) -> list[Part]:
    """Parts covering rows [skip, skip + total): `per_part` rows each, the last one shorter. An
    empty range still gets one part (its header)."""
    n = max(1, math.ceil(total_rows / per_part))
    return [
        Part(
            job_id=job_id,
            seq=i,
            state=PartState.PENDING,
            first_row=skip + i * per_part,
            row_count=max(1, min(per_part, total_rows - i * per_part)),
        )
        for i in range(n)
    ]


def rows_to_export(dataset_rows: int, skip: int, row_count: int | None) -> int:
    """How many rows the job exports: from `skip` to the end, capped at `rowCount`."""
    available = max(0, dataset_rows - skip)
    return available if row_count is None else min(available, row_count)


@register_provider("claro", "https://secure-api.getclaro.ai/api/v2")
class ClaroAdapter(StagedAdapterBase):
    default_concurrency = (
        4  # jobs at once unless `concurrency` is set: 100 requests a minute are shared
    )

    def __init__(self, cfg: ProviderConfig) -> None:
        self.name = cfg.name or "claro"
        self.cfg = cfg
        pace = AccountPace()
        self.http = HttpClient.for_provider(
            cfg,
            self.name,
            headers={"Authorization": f"Bearer {cfg.secret()}", "Accept": "application/json"},
            requests_per_minute=cfg.requests_per_minute or DEFAULT_RPM,
            pace=pace,
        )
        # Pre-signed download URLs get no credentials at all (they may point at another host;
        # HttpClient refuses to send credentials to another origin, and plain http unless it is
        # loopback), and do not count against the API's per-minute limit.
        self.downloads = HttpClient.for_provider(
            cfg,
            self.name,
            headers={},
            requests_per_minute=None,
            pace=pace,
            rate_group="downloads",
        )

    async def close(self) -> None:
        await self.http.close()
        await self.downloads.close()

    def result_extension(self, job: Job) -> str:
        return str(job.params.get("format", "csv"))

    async def check(self) -> dict[str, Any]:
        page = await answer(
            self.http, ClaroDatasetPage, "GET", "/datasets", params={"page": 1, "limit": 1}
        )
        return {
            "datasets": page.pagination.total,
            "requests_per_minute": self.cfg.requests_per_minute or DEFAULT_RPM,
        }

    # --- datasets -----------------------------------------------------------------------------
    async def list_datasets(self, filt: dict[str, Any]) -> list[dict[str, Any]]:
        """Every dataset matching the filter, across pages."""
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            query = {"page": page, "limit": 100, **{k: v for k, v in filt.items() if v}}
            body = await answer(self.http, ClaroDatasetPage, "GET", "/datasets", params=query)
            items = body.data
            out += [d.as_dict() for d in items]
            if page >= body.pagination.totalPages or not items:
                return out
            if page >= MAX_PAGES:  # a provider that never stops paging must not hang the job
                raise BadAnswer(self.name, f"GET /datasets: more than {MAX_PAGES} pages")
            page += 1

    async def _wait(self, work: Work, attempt: int, why: str) -> None:
        if work.deadline_passed():
            raise RemoteJobFailed(self.name, f"{why} at the pipeline's deadline")
        poll = self.cfg.poll
        delay = min(poll.max_interval, poll.initial * 1.5 ** (attempt - 1))
        log.info("claro_waiting", job_id=work.job.id, reason=why, seconds=round(delay, 2))
        await asyncio.sleep(delay)

    async def ready_dataset(self, dataset_id: str, work: Work) -> dict[str, Any]:
        """The dataset's details once it is no longer processing."""
        attempt = 0
        while True:
            info = await answer(self.http, ClaroDataset, "GET", f"/datasets/{_q(dataset_id)}")
            if info.status == "failed":
                raise Rejected(self.name, f"dataset {dataset_id} failed processing at Claro")
            if info.status != "processing":
                return info.as_dict()
            attempt += 1
            await self._wait(work, attempt, f"dataset {dataset_id} still processing")

    async def export_url(self, job: Job, part: Part, work: Work) -> str:
        p = job.params
        body: dict[str, Any] = {
            "format": p.get("format", "csv"),
            "rowCount": part.row_count,
            "skip": part.first_row,
            "expiresIn": p.get("expiresIn", 3600),
        }
        if p.get("columnIds"):
            body["columnIds"] = p["columnIds"]
        if p.get("includeMetadata") is not None:
            body["includeMetadata"] = p["includeMetadata"]
        attempt = 0
        while True:
            try:
                export = await answer(
                    self.http,
                    ClaroExport,
                    "POST",
                    f"/datasets/{_q(p['datasetId'])}/export",
                    json=body,
                )
            except Rejected as exc:
                if exc.code != "PROCESSING_IN_PROGRESS":
                    raise
                attempt += 1
                await self._wait(work, attempt, f"dataset {p['datasetId']} still processing")
                continue
            if not export.downloadUrl.startswith(("https://", "http://")):
                raise BadAnswer(self.name, "POST /datasets/{id}/export: downloadUrl is not a URL")
            return export.downloadUrl

    # --- the job ------------------------------------------------------------------------------
    async def run(self, job: Job, work: Work) -> dict[str, Any] | None:
        p = job.params
        if p.get("filter") is not None:
            await self._fan_out(job, work)
            return None
        fmt = str(p.get("format", "csv"))
        parts = await work.parts()
        if not parts:
            info = await self.ready_dataset(str(p["datasetId"]), work)
            skip = int(p.get("skip", 0))
            total = rows_to_export(int(info.get("rowCount", 0)), skip, p.get("rowCount"))
            parts = plan_parts(job.id, total, int(p.get("partRows", MAX_ROWS)), skip)
            await work.save(*parts)
            log.info("claro_parts_planned", job_id=job.id, rows=total, parts=len(parts))
        scratch = work.scratch_dir()
        done: list[Path] = []
        for part in parts:
            if part.state == PartState.DONE and _intact(part):
                done.append(Path(str(part.path)))
                continue
            done.append(await self._export_part(job, work, part, scratch, fmt))
        return await asyncio.to_thread(self._finish, job, work, done, fmt)

    async def _export_part(self, job: Job, work: Work, part: Part, scratch: Path, fmt: str) -> Path:
        target = scratch / f"part-{part.seq:05d}.{fmt}"
        label = f"download of part {part.seq + 1} (rows from {part.first_row})"
        last: ProviderError | None = None
        for url_try in range(1, URL_TRIES + 1):
            url = await self.export_url(job, part, work)
            for dl_try in range(1, DOWNLOAD_TRIES + 1):
                sink = AtomicFile(target).open()
                try:
                    async with self.downloads.open("GET", url, label=label, download=True) as resp:
                        async for chunk in resp.content.iter_chunked(1 << 20):
                            await sink.write(chunk)
                    await sink.commit(work.committer)
                except (Rejected, BadAnswer) as exc:  # expired, refused, redirect, not https
                    # (the URL itself is bad): this URL is done for, ask for a fresh one
                    sink.abort()
                    last = exc
                    log.warning("claro_url_refused", job_id=job.id, part=part.seq, try_=url_try)
                    break
                except ProviderError as exc:
                    sink.abort()
                    last = exc
                    log.warning("claro_download_retry", job_id=job.id, part=part.seq, try_=dl_try)
                    continue
                except BaseException:
                    sink.abort()
                    raise
                await work.save(
                    Part(
                        job_id=job.id,
                        seq=part.seq,
                        state=PartState.DONE,
                        first_row=part.first_row,
                        row_count=part.row_count,
                        path=str(target),
                        bytes=sink.bytes,
                        sha256=sink.sha256,
                    )
                )
                return target
        raise Unavailable(
            self.name, f"part {part.seq + 1}: no complete download after {URL_TRIES} URLs ({last})"
        )

    def _finish(self, job: Job, work: Work, parts: list[Path], fmt: str) -> dict[str, Any]:
        """Stitch (csv/json) or publish the parts (xlsx), then drop the scratch directory."""
        final = work.result_path(fmt)
        if fmt in ("csv", "json"):
            size, sha, rows = stitch(parts, final, fmt)
        elif len(parts) == 1:
            os.replace(parts[0], final)
            _fsync_dir(final.parent)
            size, sha, rows = final.stat().st_size, file_sha256(final), None
        else:
            final, size, sha = _publish_xlsx_parts(parts, final)
            rows = None
        work.drop_scratch()
        return {"path": str(final), "bytes": size, "sha256": sha, "rows": rows}

    async def _fan_out(self, job: Job, work: Work) -> None:
        """A filter: one new job per matching dataset (each with its own parts and result)."""
        datasets = await self.list_datasets(dict(job.params["filter"]))
        base = {k: v for k, v in job.params.items() if k != "filter"}
        for ds in datasets:
            await work.enqueue_child(str(ds["id"]), {**base, "datasetId": str(ds["id"])})
        log.info("claro_expanded", job_id=job.id, datasets=len(datasets))


def _q(value: Any) -> str:
    """An id as one path segment: `../../etc/x` must not climb the API's paths."""
    return quote(str(value), safe="")


def _intact(part: Part) -> bool:
    """A DONE part's file is still there with the size recorded (a crash after stitching may
    have removed it; then it is downloaded again)."""
    if not part.path or part.bytes is None:
        return False
    path = Path(part.path)
    return path.exists() and path.stat().st_size == part.bytes


def _publish_xlsx_parts(parts: list[Path], final: Path) -> tuple[Path, int, str]:
    """xlsx cannot be concatenated: the parts move next to a manifest listing them in order."""
    folder = final.with_suffix("")
    folder = folder.with_name(folder.name + "_parts")
    folder.mkdir(parents=True, exist_ok=True)
    listing = []
    for i, src in enumerate(parts, start=1):
        dst = folder / f"part-{i:04d}.xlsx"
        os.replace(src, dst)
        listing.append({"path": str(dst), "bytes": dst.stat().st_size, "sha256": file_sha256(dst)})
    _fsync_dir(folder)
    manifest = final.with_name(final.stem + ".manifest.json")
    data = json.dumps({"format": "xlsx", "parts": listing}, indent=2).encode()
    tmp = manifest.with_name(f".{manifest.name}.part")
    with os.fdopen(create_new(tmp), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, manifest)
    _fsync_dir(manifest.parent)
    return manifest, len(data), file_sha256(manifest)
