"""Clari bulk ingest (api-docs/clari-api-openapi.yaml.txt, Data Ingestion API).

`clari.ingest`: one job per new source file of records — JSON in the API's own shape
(`[{"sourceEntity": ..., "records": [...]}]`) or JSON Lines, one record per line with its
`sourceEntity`. The source is read streaming (orchestrator/imports/records.py; ijson for the
JSON form): one pass checks every record first (`id`, `createdAt`, `updatedAt` in milliseconds,
`updatedAt >= createdAt`, no id twice in a source entity within an upload file) and plans the
upload files of at most 10 MB as ranges of the source; each file is rendered when it is sent,
each a part in the ledger: `POST /ingest/bulk/entity/
{entity}` (multipart `FileData`, `mode`, `isLastBatch` on the last file of an initial load), then
`GET /ingest/job/{jobId}` until SUCCESS, FAILED or VALIDATION_FAILED (whose errorCode /
errorSummary list is recorded). Files go one at a time, in order — `isLastBatch` must come last —
and Clari's `429 TOO_MANY_REQUESTS` (concurrent ingestion jobs) is waited out. A file whose POST
may have landed before a crash is sent again: records are keyed by id, so the second copy
updates the same records.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import aiohttp
import structlog
from pydantic import Field

from orchestrator.config import ProviderConfig
from orchestrator.domain import Job, Part, PartState
from orchestrator.errors import Rejected, RemoteJobFailed, Unavailable
from orchestrator.http import HttpClient
from orchestrator.imports.flow import Opened, open_import
from orchestrator.imports.records import check_record, split_files, upload_files, validate_records
from orchestrator.imports.streams import SourceError
from orchestrator.providers.base import Work, register_kind
from orchestrator.providers.claravine import span_of
from orchestrator.providers.sources import FileImportParams, expand_sources

log = structlog.get_logger(__name__)
KIND = "clari.ingest"
MAX_FILE_BYTES = 10 * 1024 * 1024
__all__ = ["check_record", "split_files"]


class IngestParams(FileImportParams):
    entity: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_]+$")
    mode: Literal["initial", "incremental"] = "incremental"
    maxFileBytes: int = Field(default=MAX_FILE_BYTES, ge=1024, le=MAX_FILE_BYTES)


register_kind(
    KIND,
    IngestParams,
    "Clari bulk ingest (POST /ingest/bulk/entity/{entity}, files ≤ 10 MB, then job status)",
    staged=True,
    expand=expand_sources,
    budgeted=False,  # Clari limits concurrent ingestion jobs itself (429), not the export slots
    uses_quota=False,
)


def ingest_base_url(cfg: ProviderConfig) -> str:
    if cfg.ingest_base_url:
        return cfg.ingest_base_url.rstrip("/")
    base = cfg.base_url.rstrip("/")
    return base[: -len("/v4")] + "/v2" if base.endswith("/v4") else base


class ClariIngest:
    """The ingest half of a Clari account: its own base URL (v2) and the partner key."""

    def __init__(self, cfg: ProviderConfig, name: str) -> None:
        self.name = name
        self.cfg = cfg
        headers = {"apikey": cfg.secret(), "Accept": "application/json"}
        if cfg.partner_key is not None:
            headers["partnerkey"] = cfg.partner_key.get_secret_value()
        self.http = HttpClient.for_provider(
            cfg,
            name,
            headers=headers,
            base_url=ingest_base_url(cfg),
            retries=max(cfg.retries, 8),  # 429 TOO_MANY_REQUESTS is waited out, not failed
            requests_per_second=min(cfg.requests_per_second, 100.0),  # documented 100/s
        )

    async def close(self) -> None:
        await self.http.close()

    async def check(self) -> str:
        """apikey + partnerkey accepted? An unknown job id answers 404 only to a valid caller."""
        try:
            await self.http.json("GET", "/ingest/job/orchestrator-credentials-check")
        except Rejected as exc:
            if exc.status == 404:
                return "apikey and partnerkey accepted"
            raise
        return "apikey and partnerkey accepted"

    async def run(self, job: Job, work: Work) -> dict[str, Any]:
        if self.cfg.partner_key is None:
            raise Rejected(self.name, "clari.ingest needs partner_key in [providers.clari]")
        try:
            src = await open_import(work)
        except SourceError as exc:
            raise Rejected(self.name, str(exc)) from None
        parts = await work.parts()
        if not src.planned or not parts:
            parts = await self._plan(job, work, src, parts)
        await src.tracker.save(force=True)
        tracker = src.tracker
        tracker.confirmed(0)
        last_seq = parts[-1].seq
        to_send = [span_of(p) for p in parts if p.state not in (PartState.DONE, PartState.RUNNING)]
        scratch = work.scratch_dir()
        await asyncio.to_thread(scratch.mkdir, parents=True, exist_ok=True)
        files = upload_files(src.path, to_send, scratch)
        try:
            for part in parts:
                if part.state == PartState.DONE:
                    continue
                if part.state != PartState.RUNNING:
                    try:
                        _, upload, _ = await asyncio.to_thread(next, files)
                    except SourceError as exc:
                        raise Rejected(self.name, str(exc)) from None
                    try:
                        part = await self._upload(job, work, part, upload, part.seq == last_seq)
                    finally:
                        await asyncio.to_thread(upload.unlink, missing_ok=True)
                await self._await(job, work, part)
                tracker.confirmed(part.row_count or 0)
                await tracker.save()
        finally:
            await asyncio.to_thread(files.close)
        await asyncio.to_thread(work.drop_scratch)
        tracker.set(phase="done")
        await tracker.save(force=True)
        return src.result(tracker.progress.rows_validated)

    async def _plan(self, job: Job, work: Work, src: Opened, parts: list[Part]) -> list[Part]:
        """Check every record (streaming; nothing sent if any is wrong) and plan the upload
        files as ranges of the source."""
        tracker = src.tracker
        tracker.set(phase="validating")
        limit = int(job.params.get("maxFileBytes", MAX_FILE_BYTES))

        def progress(rows: int) -> None:
            tracker.validated = rows

        try:
            async with tracker.ticking():
                plan = await asyncio.to_thread(validate_records, src.path, limit, progress)
                tracker.validated = plan.rows
        except SourceError as exc:
            raise Rejected(self.name, str(exc)) from None
        planned = [
            Part(
                job_id=job.id,
                seq=span.seq,
                state=PartState.PENDING,
                first_row=span.first_row,
                row_count=span.row_count,
                byte_start=span.start,
                byte_end=span.end,
                first_line=span.first_line,
                last_line=span.last_line,
            )
            for span in plan.spans
        ]
        if parts:  # planned before (an older version): keep what was sent, add the ranges
            old = {c.seq: c for c in parts}
            if len(old) != len(planned):
                raise Rejected(self.name, f"{src.path}: no longer splits as it was planned")
            planned = [
                replace(
                    old[c.seq],
                    first_row=c.first_row,
                    row_count=c.row_count,
                    byte_start=c.byte_start,
                    byte_end=c.byte_end,
                    first_line=c.first_line,
                    last_line=c.last_line,
                )
                for c in planned
            ]
        await work.save(*planned)
        tracker.set(phase="sending")
        log.info("ingest_planned", job_id=job.id, files=len(planned), records=plan.rows)
        return planned

    async def _upload(self, job: Job, work: Work, part: Part, upload: Path, last: bool) -> Part:
        if part.state == PartState.SENDING:
            log.warning("ingest_resending", job_id=job.id, part=part.seq)  # records keyed by id
        part = replace(part, bytes=(await asyncio.to_thread(upload.stat)).st_size)
        await work.save(replace(part, state=PartState.SENDING))
        mode = str(job.params.get("mode", "incremental"))
        query = {"mode": mode}
        if mode == "initial":
            query["isLastBatch"] = "true" if last else "false"
        form = aiohttp.FormData()
        data = await asyncio.to_thread(upload.open, "rb")  # streamed from disk by aiohttp
        try:
            form.add_field(
                "FileData",
                data,
                filename=f"part-{part.seq + 1}.json",
                content_type="application/json",
            )
            entity = job.params["entity"]
            answer = await self.http.json(
                "POST", f"/ingest/bulk/entity/{entity}", params=query, data=form
            )
        finally:
            data.close()
        remote = str(answer.get("jobId") or "") if isinstance(answer, dict) else ""
        if not remote:
            raise Unavailable(self.name, "ingest answer has no jobId")
        sent = replace(part, state=PartState.RUNNING, remote_id=remote)
        await work.save(sent)
        log.info("ingest_uploaded", job_id=job.id, part=part.seq, ingest_job=remote, last=last)
        return sent

    async def _await(self, job: Job, work: Work, part: Part) -> None:
        poll = self.cfg.poll
        delay = poll.initial
        while True:
            try:
                body = await self.http.json("GET", f"/ingest/job/{part.remote_id}")
            except Rejected as exc:
                if exc.status != 400 or not isinstance(exc.body, dict):
                    raise
                body = exc.body  # VALIDATION_FAILED comes as a 400 with the job in its body
            info = body.get("message", body) if isinstance(body, dict) else {}
            status = str(info.get("status", "")).upper()
            if status == "SUCCESS":
                await work.save(replace(part, state=PartState.DONE, detail="SUCCESS"))
                return
            if status in ("FAILED", "VALIDATION_FAILED", "VALIDATION_ERROR"):
                detail = _errors_text(info.get("message"))
                await work.save(replace(part, state=PartState.FAILED, detail=detail))
                raise RemoteJobFailed(
                    self.name,
                    f"ingest job {part.remote_id} (file {part.seq + 1}) ended {status}: {detail}",
                )
            await asyncio.sleep(delay)
            delay = min(poll.max_interval, delay * 1.5)


def _errors_text(message: Any) -> str:
    if isinstance(message, list):
        items = [
            f"{e.get('errorCode', '')}: {e.get('errorSummary', '')}"
            for e in message
            if isinstance(e, dict)
        ]
        more = f" (+{len(items) - 10} more)" if len(items) > 10 else ""
        return "; ".join(items[:10]) + more
    return str(message or "no detail")
