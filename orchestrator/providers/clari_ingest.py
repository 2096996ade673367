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
errorSummary list is recorded). Up to `concurrentFiles` files are in flight at once (Clari
caps concurrent ingestion jobs per partner); a file that may hold an id of one in flight waits
for it (Clari applies files in flight in any order), `isLastBatch` goes after every other file,
and Clari's `429 TOO_MANY_REQUESTS` is waited out, each attempt with a fresh body. A file whose
POST may have landed before a crash is sent again: records are keyed by id, so the second copy
updates the same records.
"""

from __future__ import annotations

import asyncio
import contextlib
from array import array
from collections.abc import Callable, Generator
from dataclasses import replace
from pathlib import Path
from typing import IO, Any, Literal
from urllib.parse import quote

import aiohttp
import structlog
from pydantic import Field, model_validator

from orchestrator.config import ProviderConfig
from orchestrator.domain import Job, Part, PartState
from orchestrator.errors import BadAnswer, Rejected, RemoteJobFailed, Unavailable
from orchestrator.http import HttpClient
from orchestrator.imports.flow import Opened, open_import, plan_parts, span_of
from orchestrator.imports.records import (
    IdFilter,
    UploadFile,
    check_record,
    split_files,
    upload_files,
    validate_records,
)
from orchestrator.imports.streams import SourceError, first_error
from orchestrator.limits import AccountPace
from orchestrator.providers.answers import Answer, RemoteId, answer, parse_answer
from orchestrator.providers.base import Work, register_kind
from orchestrator.providers.sources import FileImportParams, expand_sources
from orchestrator.redaction import redact

log = structlog.get_logger(__name__)
KIND = "clari.ingest"
MAX_FILE_BYTES = 10 * 1024 * 1024
# Files in flight at once (uploaded, ingestion not finished). Clari caps concurrent ingestion
# jobs per partner (`429 TOO_MANY_REQUESTS`, "Max concurrent async ingestion jobs limit
# reached") without publishing the number; a 429 is still waited out.
CONCURRENT_FILES = 2
__all__ = ["check_record", "split_files"]


class IngestParams(FileImportParams):
    entity: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_]+$")
    mode: Literal["initial", "incremental"] = "incremental"
    maxFileBytes: int = Field(default=MAX_FILE_BYTES, ge=1024, le=MAX_FILE_BYTES)
    concurrentFiles: int = Field(default=CONCURRENT_FILES, ge=1, le=16)


register_kind(
    KIND,
    IngestParams,
    "Clari bulk ingest (POST /ingest/bulk/entity/{entity}, files ≤ 10 MB, then job status)",
    staged=True,
    expand=expand_sources,
    budgeted=False,  # Clari limits concurrent ingestion jobs itself (429), not the export slots
    uses_quota=False,
)


class IngestSubmitted(Answer):
    jobId: RemoteId


class IngestStatus(Answer):
    """`GET /ingest/job/{jobId}`: `{"message": {"status": ..., "message": ...}}` (the job under
    `message`), also accepted flat. `message` of the job: a text, or the list of errors."""

    status: str
    message: Any = None

    @model_validator(mode="before")
    @classmethod
    def _unwrap(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("message"), dict):
            return data["message"]
        return data


class IngestNotFound(Answer):
    """The documented 404 of `GET /ingest/job/{jobId}`: `{"error": "Bulk ingestion job not
    found. ..."}`. Only this answer, from the ingest API itself, shows the keys were accepted."""

    error: str


def ingest_base_url(cfg: ProviderConfig) -> str:
    if cfg.ingest_base_url:
        return cfg.ingest_base_url.rstrip("/")
    base = cfg.base_url.rstrip("/")
    return base[: -len("/v4")] + "/v2" if base.endswith("/v4") else base


class ClariIngest:
    """The ingest half of a Clari account: its own base URL (v2) and the partner key."""

    def __init__(self, cfg: ProviderConfig, name: str, *, pace: AccountPace | None = None) -> None:
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
            pace=pace,
        )
        # Status reads answer FAILED with HTTP 500 ("Please retry ingestion."): that answer is
        # read, not retried; other 5xx are retried here, on the poll's own schedule.
        self.status_http = HttpClient.for_provider(
            cfg,
            name,
            headers=headers,
            base_url=ingest_base_url(cfg),
            retries=0,
            requests_per_second=min(cfg.requests_per_second, 100.0),
            pace=pace,
        )

    async def close(self) -> None:
        await self.http.close()
        await self.status_http.close()

    async def check(self) -> str:
        """apikey + partnerkey accepted? An unknown job id answers the documented 404 (`{"error":
        "Bulk ingestion job not found..."}`) only to a valid caller. Any other answer — another
        404 (a proxy, another host), a 200 — proves nothing and is reported as such."""
        where = "GET /ingest/job/{jobId}"
        try:
            await self.http.json("GET", "/ingest/job/orchestrator-credentials-check")
        except Rejected as exc:
            if exc.status == 404:
                found = parse_answer(IngestNotFound, exc.body, provider=self.name, where=where)
                if "not found" in found.error.lower() and "job" in found.error.lower():
                    return "apikey and partnerkey accepted"
            raise
        raise BadAnswer(self.name, f"{where}: an unknown job id was not answered 404")

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
        src.tracker.confirmed(0)
        scratch = work.scratch_dir()
        await asyncio.to_thread(scratch.mkdir, parents=True, exist_ok=True)
        to_send = [span_of(p) for p in parts if p.state not in (PartState.DONE, PartState.RUNNING)]
        files = upload_files(src.path, to_send, scratch)
        window = _Window(int(job.params.get("concurrentFiles", CONCURRENT_FILES)))
        try:
            async with asyncio.TaskGroup() as tasks:
                for part in parts:
                    if part.state != PartState.DONE:
                        await self._start(job, work, src, part, parts[-1].seq, files, window, tasks)
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        finally:
            with contextlib.suppress(ValueError):  # a render cancelled mid-way still runs
                await asyncio.to_thread(files.close)
        await asyncio.to_thread(work.drop_scratch)
        src.tracker.set(phase="done")
        await src.tracker.save(force=True)
        return src.result(src.tracker.progress.rows_validated)

    async def _start(
        self,
        job: Job,
        work: Work,
        src: Opened,
        part: Part,
        last_seq: int,
        files: Generator[UploadFile, None, None],
        window: _Window,
        tasks: asyncio.TaskGroup,
    ) -> None:
        """Start one file in the window: one already uploaded before a restart is followed (its
        records unknown: later files wait for it); another is rendered, then uploaded once no
        file in flight may hold one of its ids (Clari would apply the two in any order) — and
        the last of an initial load once every other is done."""
        if part.state == PartState.RUNNING:
            done = await window.enter(part.seq, None)
            tasks.create_task(
                self._finish(job, work, src, part, None, done), name=f"ingest-{part.seq}"
            )
            return
        try:
            upload = await asyncio.to_thread(next, files)
        except SourceError as exc:
            raise Rejected(self.name, str(exc)) from None
        last = part.seq == last_seq
        if last and job.params.get("mode") == "initial":
            await window.drain()
        done = await window.enter(part.seq, upload)
        follow = self._finish(job, work, src, part, upload, done, last=last)
        tasks.create_task(follow, name=f"ingest-{part.seq}")

    async def _finish(
        self,
        job: Job,
        work: Work,
        src: Opened,
        part: Part,
        upload: UploadFile | None,
        done: Callable[[], None],
        *,
        last: bool = False,
    ) -> None:
        """Upload (unless in flight already) and follow one file to SUCCESS."""
        try:
            if upload is not None:
                try:
                    part = await self._upload(job, work, part, upload.path, last)
                finally:
                    await asyncio.to_thread(upload.path.unlink, missing_ok=True)
            await self._await(job, work, part)
            src.tracker.confirmed(part.row_count or 0)
            await src.tracker.save()
        finally:
            done()

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
        old = {c.seq: c for c in parts}  # planned before (an older version): keep what was sent
        if old and len(old) != len(plan.spans):
            raise Rejected(self.name, f"{src.path}: no longer splits as it was planned")
        planned = plan_parts(job.id, plan.spans, old)
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
        opened: list[IO[bytes]] = []

        def form() -> aiohttp.FormData:
            """A fresh body for each attempt (a 429 or a 5xx is retried; the last attempt's
            file object was read to its end), streamed from disk by aiohttp."""
            for f in opened:
                f.close()
            opened.append(upload.open("rb"))
            body = aiohttp.FormData()
            body.add_field(
                "FileData",
                opened[-1],
                filename=f"part-{part.seq + 1}.json",
                content_type="application/json",
            )
            return body

        entity = quote(str(job.params["entity"]), safe="")
        try:
            submitted = await answer(
                self.http,
                IngestSubmitted,
                "POST",
                f"/ingest/bulk/entity/{entity}",
                params=query,
                body=form,
            )
        finally:
            for f in opened:
                f.close()
        remote = submitted.jobId
        sent = replace(part, state=PartState.RUNNING, remote_id=remote)
        await work.save(sent)
        log.info("ingest_uploaded", job_id=job.id, part=part.seq, ingest_job=remote, last=last)
        return sent

    async def _status(self, part: Part) -> IngestStatus:
        """The ingestion job's status record; its FAILED and VALIDATION_FAILED come with HTTP
        500 and 400 and are answers, not errors."""
        path = f"/ingest/job/{quote(str(part.remote_id), safe='')}"
        try:
            body = await self.status_http.json("GET", path)
        except (Rejected, Unavailable) as exc:
            if (exc.status not in (400, 500)) or not isinstance(exc.body, dict):
                raise
            body = exc.body
        return parse_answer(IngestStatus, body, provider=self.name, where="GET /ingest/job/{jobId}")

    async def _await(self, job: Job, work: Work, part: Part) -> None:
        poll = self.cfg.poll
        delay = poll.initial
        failures = 0
        while True:
            try:
                info = await self._status(part)
            except Unavailable:
                failures += 1
                if failures > max(self.cfg.retries, 1):
                    raise
                await asyncio.sleep(delay)
                delay = min(poll.max_interval, delay * 2)
                continue
            failures = 0
            status = info.status.upper()
            if status == "SUCCESS":
                await work.save(replace(part, state=PartState.DONE, detail="SUCCESS"))
                return
            if status == "FAILED":  # "Please retry ingestion.": the work, not the status read
                why = redact(str(info.message))[:500]
                detail = f"ingest job {part.remote_id} ended FAILED: {why}"
                await work.save(replace(part, state=PartState.PENDING, detail=detail))
                raise Unavailable(self.name, f"file {part.seq + 1}: {detail}; will upload again")
            if status in ("VALIDATION_FAILED", "VALIDATION_ERROR"):
                detail = _errors_text(info.message)
                await work.save(replace(part, state=PartState.FAILED, detail=detail))
                raise RemoteJobFailed(
                    self.name,
                    f"ingest job {part.remote_id} (file {part.seq + 1}) ended {status}: {detail}",
                )
            await asyncio.sleep(delay)
            delay = min(poll.max_interval, delay * 1.5)


class _Window:
    """The upload files in flight: at most `size` at once (Clari's concurrent ingestion jobs),
    each with the ids it holds (None: unknown, uploaded before a restart)."""

    def __init__(self, size: int) -> None:
        self.slots = asyncio.Semaphore(size)
        self.flying: dict[int, tuple[IdFilter | None, asyncio.Event]] = {}

    async def enter(self, seq: int, upload: UploadFile | None) -> Callable[[], None]:
        """Wait for a place, and for every file in flight that may hold an id of `upload`;
        the answer is what to call once the file is done (or given up)."""
        if upload is not None:
            for ids, landed in list(self.flying.values()):
                if ids is None or await asyncio.to_thread(ids.may_hold_any, upload.keys):
                    await landed.wait()
        await self.slots.acquire()
        ids = None if upload is None else await asyncio.to_thread(IdFilter, upload.keys)
        if upload is not None:
            upload.keys = array("q")  # in the filter now
        landed = asyncio.Event()
        self.flying[seq] = (ids, landed)

        def done() -> None:
            landed.set()
            self.flying.pop(seq, None)
            self.slots.release()

        return done

    async def drain(self) -> None:
        """Until every file in flight is done."""
        for _, landed in list(self.flying.values()):
            await landed.wait()


def _errors_text(message: Any) -> str:
    """The job's error list as text, short and redacted (it is stored and shown)."""
    if isinstance(message, list):
        items = [
            f"{str(e.get('errorCode', ''))[:100]}: {str(e.get('errorSummary', ''))[:300]}"
            for e in message
            if isinstance(e, dict)
        ]
        more = f" (+{len(items) - 10} more)" if len(items) > 10 else ""
        return redact("; ".join(items[:10]) + more)
    return redact(str(message or "no detail")[:1000])
