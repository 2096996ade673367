"""Claravine submissions (imports) and transaction exports (api-docs/claravine-api.txt).

`claravine.submission`: one job per new source file (keyed by its sha256, so a file is imported
once). The file is never held in memory (orchestrator/imports/tables.py): one streaming pass
checks every row (all problems reported, nothing sent if there is one) and plans chunks of at
most 1,000 rows (the API's limit per POST) as byte ranges; each chunk is re-read from its range
when it is sent. Each chunk is a part in the ledger with its own `transactionName` (pipeline,
file, chunk), transaction uuid and byte range: SENDING is recorded before the POST, so after a
crash the chunk is looked up by name and never sent twice, and a restart resumes from the plan
without reading the file again (unless its size or mtime moved: then its sha256 is checked).
Claravine fails invalid data silently, so every chunk is polled until Complete or Failed; POSTs
(a few in flight) and status polls (every chunk due, at once) share the account's request
rate. A Failed chunk is reported with the file's line range and the API's detail. Chunks whose
exact rows an earlier job of the pipeline already imported are skipped (each chunk's content
hash is taken when it is read to be sent): re-running a fixed file sends only what failed.

`claravine.transactions_export`: the transactions of a dataset in a date window; the data of each
Complete one is fetched (a part each, resumable) and written as one CSV or JSON Lines file.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import quote

import structlog
from pydantic import Field, model_validator

from orchestrator.config import ProviderConfig
from orchestrator.domain import Job, Part, PartState
from orchestrator.errors import BadAnswer, ProviderError, Rejected, RemoteJobFailed, Unavailable
from orchestrator.http import HttpClient, loads_json
from orchestrator.imports.flow import Opened, open_import, part_of, span_of
from orchestrator.imports.streams import SourceError, Span, first_error
from orchestrator.imports.tables import chunk_hash, read_fields, read_span, validate_table
from orchestrator.ledger.store import utcnow
from orchestrator.limits import AccountPace
from orchestrator.outputs import AtomicFile
from orchestrator.providers.answers import Answer, RemoteId, answer, parse_answer
from orchestrator.providers.base import (
    Params,
    StagedAdapterBase,
    Work,
    register_kind,
    register_provider,
)
from orchestrator.providers.sources import FileImportParams, expand_sources
from orchestrator.redaction import redact

log = structlog.get_logger(__name__)
SUBMISSION, EXPORT = "claravine.submission", "claravine.transactions_export"
MAX_ROWS = 1000  # the API's limit per POST
THROTTLE_RETRIES = 4
UNANSWERED_TRIES = 3  # POSTs of one chunk whose answer was lost (each looked up first)
DEFAULT_KEY_HEADER, DEFAULT_SECRET_HEADER = "X-API-Key", "X-API-Secret"
STATUS_DONE, STATUS_FAILED = "complete", "failed"
SEND_WINDOW = 16  # POSTs of one job in flight at once (each holds one chunk's rows)
POLL_BATCH = 32  # statuses asked at once; the rate window spaces them
PAGE = 1000  # chunks of the plan read from (and written to) the ledger at a time
__all__ = ["chunk_hash"]  # shared with clayva


class SubmissionParams(FileImportParams):
    dataset: str = Field(min_length=1)
    rowsPerPost: int = Field(default=MAX_ROWS, ge=1, le=MAX_ROWS)


class TransactionsExportParams(Params):
    dataset: str = Field(min_length=1)
    start_date: str = Field(alias="start-date", pattern=r"^\d{4}-\d{2}-\d{2}$")
    end_date: str = Field(alias="end-date", pattern=r"^\d{4}-\d{2}-\d{2}$")
    format: Literal["csv", "jsonl"] = "csv"

    @model_validator(mode="after")
    def _window(self) -> TransactionsExportParams:
        start, end = date.fromisoformat(self.start_date), date.fromisoformat(self.end_date)
        if end < start:
            raise ValueError("end-date is before start-date")
        return self


# --- planning (pure, no network): orchestrator/imports/tables.py reads the file ---------------


def transaction_name(pipeline: str, file_sha: str, job_id: int, seq: int, total: int) -> str:
    """Unique per (pipeline, file, job, chunk): how a restarted daemon finds what it sent. The
    job is part of it so a retried job never mistakes an earlier job's submission for its own."""
    return f"orchestrator/{pipeline}/{file_sha[:16]}/job{job_id}/{seq + 1}-of-{total}"


def plan_chunks(job: Job, spans: Sequence[Span], total: int | None = None) -> list[Part]:
    """One part per planned chunk (of `total` in the plan), carrying its byte range and lines
    in the source."""
    total = max(1, len(spans) if total is None else total)
    file_sha = str(job.params.get("sha256") or "")
    return [
        replace(
            part_of(job.id, span),
            name=transaction_name(job.pipeline, file_sha, job.id, span.seq, total),
            content_sha256=span.digest,
        )
        for span in spans
    ]


register_kind(
    SUBMISSION,
    SubmissionParams,
    "Claravine submission: rows of CSV/JSON Lines files into a template, ≤ 1,000 per POST",
    staged=True,
    expand=expand_sources,
)
register_kind(
    EXPORT,
    TransactionsExportParams,
    "Claravine transactions of a dataset in a date window, as one CSV or JSON Lines file",
    staged=True,
)


# --- answers (api-docs/claravine-api.txt) ------------------------------------------------------


class _Listing(Answer):
    """An answer that lists things under `_key`, or is the bare array."""

    _key: ClassVar[str]

    @model_validator(mode="before")
    @classmethod
    def _wrap(cls, data: Any) -> Any:
        key = getattr(cls, "_key", None)  # None on this base: nothing to list under
        return {key: data} if key is not None and isinstance(data, list) else data


class ClaravineTemplate(Answer):
    uuid: RemoteId
    fields: list[str] | None = None


class ClaravineTemplates(_Listing):
    """`GET /datasets`: `{"datasets": [...]}` (or the bare array)."""

    _key = "datasets"
    datasets: list[ClaravineTemplate]


class ClaravineTransaction(Answer):
    uuid: RemoteId
    status: str = ""
    transactionName: str | None = None
    name: str | None = None


class ClaravineTransactions(_Listing):
    """`GET /{dataset}/transactions`: `{"transactions": [...]}` (or the bare array)."""

    _key = "transactions"
    transactions: list[ClaravineTransaction]


class ClaravineStatus(Answer):
    """`GET /{dataset}/transactions/{uuid}/status/`."""

    status: str
    errors: list[Any] | None = None
    message: str | None = None


class ClaravinePosted(Answer):
    """`POST /{dataset}/data`: the new transaction's uuid (`transactionUuid`, or `uuid`)."""

    transactionUuid: RemoteId

    @model_validator(mode="before")
    @classmethod
    def _uuid(cls, data: Any) -> Any:
        if isinstance(data, dict) and "transactionUuid" not in data and "uuid" in data:
            return {**data, "transactionUuid": data["uuid"]}
        return data


class ClaravineTable(Answer):
    """`GET /{dataset}/transaction/{uuid}/data/`: the rows of one transaction. Data under
    another key is an error, not an empty table (a header-only file once passed as success)."""

    header: list[str]
    rows: list[list[Any]]


def describe_failure(path: str, part: Part, detail: str) -> str:
    first = part.first_row or 0
    count = part.row_count or 0
    lo, hi = part.first_line or first + 2, part.last_line or first + count + 1
    return f"{path}: lines {lo}-{hi} (rows {first + 1}-{first + count}): {detail}"


def _errors_text(body: dict[str, Any], lines: list[int]) -> str:
    """The API's own detail, with its row numbers (1-based within the chunk) as file lines."""
    errors = body.get("errors") or []
    parts = []
    for err in errors[:5]:
        if not isinstance(err, dict):
            continue
        row = err.get("row")
        where = ""
        if isinstance(row, int) and 0 < row <= len(lines):
            where = f"line {lines[row - 1]}: "
        field = f"{err['field']}: " if err.get("field") else ""
        parts.append(f"{where}{field}{err.get('message', '')}")
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    text = "; ".join(parts)[:2000] + more
    return redact(text or str(body.get("message") or "Failed (no detail given)")[:2000])


@register_provider("claravine", "https://api.claravine.com/v1")
class ClaravineAdapter(StagedAdapterBase):
    default_concurrency = 2  # jobs at once unless `concurrency` is set

    def __init__(self, cfg: ProviderConfig) -> None:
        self.name = cfg.name or "claravine"
        self.cfg = cfg
        if cfg.api_secret is None:
            raise Rejected(self.name, "api_secret is required (Claravine uses a key and a secret)")
        headers = {
            cfg.key_header or DEFAULT_KEY_HEADER: cfg.secret(),
            cfg.secret_header or DEFAULT_SECRET_HEADER: cfg.api_secret.get_secret_value(),
            "Accept": "application/json",
        }
        pace = AccountPace()  # both clients share the account's rate window and pause
        self.http = HttpClient.for_provider(cfg, self.name, headers=headers, pace=pace)
        # POSTs are not retried blindly: a lost answer is settled by looking the name up. A 429
        # created nothing, so that one is waited out and retried.
        self.post_http = HttpClient.for_provider(
            cfg,
            self.name,
            headers=headers,
            retries=0,
            throttle_retries=THROTTLE_RETRIES,
            pace=pace,
        )
        # POSTs and status polls draw on one window: the account's requests_per_second.
        self.post_http.limiter = self.http.limiter
        self._templates: dict[str, list[str] | None] | None = None

    async def close(self) -> None:
        await self.http.close()
        await self.post_http.close()

    def result_extension(self, job: Job) -> str:
        return str(job.params.get("format", "csv"))

    async def check(self) -> dict[str, Any]:
        self._templates = None
        await self.template_fields_all()
        return {"templates": len(self._templates or {})}

    async def template_fields_all(self) -> None:
        if self._templates is None:
            listing = await answer(self.http, ClaravineTemplates, "GET", "/datasets")
            self._templates = {t.uuid: t.fields for t in listing.datasets}

    # --- API calls ------------------------------------------------------------------------------
    async def template_fields(self, dataset: str) -> list[str] | None:
        """The template's field names when GET /datasets publishes them (None: unknown)."""
        await self.template_fields_all()
        assert self._templates is not None
        if dataset not in self._templates:
            raise Rejected(self.name, f"dataset {dataset} is not among the templates this key sees")
        return self._templates[dataset]

    async def transactions(self, dataset: str, start: date, end: date) -> list[dict[str, Any]]:
        listing = await answer(
            self.http,
            ClaravineTransactions,
            "GET",
            f"/{_q(dataset)}/transactions",
            params={"start-date": start.isoformat(), "end-date": end.isoformat()},
        )
        return [t.as_dict() for t in listing.transactions]

    async def status(self, dataset: str, tx: str) -> dict[str, Any]:
        path = f"/{_q(dataset)}/transactions/{_q(tx)}/status/"
        return (await answer(self.http, ClaravineStatus, "GET", path)).as_dict()

    # --- submissions ----------------------------------------------------------------------------
    async def run(self, job: Job, work: Work) -> dict[str, Any] | None:
        if job.kind == EXPORT:
            return await self._export(job, work)
        return await self._submission(job, work)

    async def _submission(self, job: Job, work: Work) -> dict[str, Any]:
        p = job.params
        dataset = str(p["dataset"])
        try:
            src = await open_import(work)
            fields = await asyncio.to_thread(read_fields, src.path)
        except SourceError as exc:
            raise Rejected(self.name, str(exc)) from None
        path = src.path
        known = await self.template_fields(dataset)
        if known is not None:
            unknown = [i for i, f in enumerate(fields, start=1) if f not in known]
            if unknown:
                raise Rejected(
                    self.name,
                    f"{path}:1: column {unknown[0]} is not a field of template {dataset} "
                    f"(fields: {', '.join(known)})",
                )
        if not src.planned or not await work.parts_after(-1, 1):
            await self._plan(job, work, src)
        await src.tracker.save(force=True)
        outcome = await self._pipeline(job, work, dataset, fields, src)
        src.tracker.set(phase="done")
        await src.tracker.save(force=True)
        if outcome.failed:
            listed = "\n".join(
                describe_failure(str(path), c, c.detail or "Failed") for c in outcome.shown
            )
            more = outcome.failed - len(outcome.shown)
            raise RemoteJobFailed(
                self.name,
                f"{outcome.failed} of {outcome.total} chunks Failed at Claravine "
                f"(the other rows were imported):\n{listed}"
                + (f"\n… and {more} more (jobs show lists every chunk)" if more > 0 else ""),
            )
        return src.result(src.tracker.progress.rows_validated)

    async def _plan(self, job: Job, work: Work, src: Opened) -> None:
        """Validate the whole file (streaming; nothing sent if anything is wrong) and store the
        chunk plan, PAGE chunks per write."""
        tracker = src.tracker
        tracker.set(phase="validating")

        def progress(rows: int) -> None:
            tracker.validated = rows

        per_post = int(job.params.get("rowsPerPost", MAX_ROWS))
        try:
            async with tracker.ticking():
                plan = await asyncio.to_thread(validate_table, src.path, per_post, progress)
                tracker.validated = plan.rows
        except SourceError as exc:
            raise Rejected(self.name, str(exc)) from None
        old = {c.seq: c for c in await work.parts()}  # planned before: by an older version
        if old and [(c.first_row, c.row_count) for c in old.values()] != [
            (s.first_row, s.row_count) for s in plan.spans
        ]:
            raise Rejected(self.name, f"{src.path}: no longer splits as it was planned")
        total = len(plan.spans)
        for at in range(0, total, PAGE):
            planned = plan_chunks(job, plan.spans[at : at + PAGE], total)
            await work.save(
                *(
                    replace(
                        old[c.seq],
                        byte_start=c.byte_start,
                        byte_end=c.byte_end,
                        first_line=c.first_line,
                        last_line=c.last_line,
                    )
                    if c.seq in old
                    else c
                    for c in planned
                )
            )
        tracker.set(phase="sending")
        log.info("claravine_planned", job_id=job.id, chunks=total)

    async def _pipeline(
        self, job: Job, work: Work, dataset: str, fields: list[str], src: Opened
    ) -> _Outcome:
        """Send every unsent chunk (a few POSTs in flight) while polling the sent ones (every
        due status at once): both draw on the account's one request-rate window, so the
        import runs at the provider's rate, not at the pace of one chunk's round trip. The
        plan is read from the ledger a page at a time; only chunks in flight are held."""
        flight: dict[int, Part] = {}  # sent, not settled
        outcome = _Outcome()
        polls = _Polls(self.cfg.poll.initial, self.cfg.poll.max_interval)
        tracker = src.tracker
        tracker.confirmed(0)

        async def send_one(chunk: Part) -> None:
            rows, digest = await asyncio.to_thread(_read_chunk, src.path, fields, chunk)
            if chunk.state == PartState.PENDING:  # rows an earlier job already imported?
                done = (await work.ledger.done_content(job.pipeline, [digest])).get(digest)
                if done is not None:
                    await work.save(
                        replace(
                            chunk,
                            state=PartState.SKIPPED,
                            content_sha256=digest,
                            remote_id=done.remote_id,
                            detail=f"imported by job {done.job_id}",
                        )
                    )
                    return
            chunk = replace(chunk, content_sha256=digest)
            sent = await self._send(job, work, dataset, chunk, fields, rows)
            flight[sent.seq] = sent
            polls.add(sent.seq)

        async def sender() -> None:
            window = asyncio.Semaphore(SEND_WINDOW)

            async def guarded(chunk: Part) -> None:
                try:
                    await send_one(chunk)
                finally:
                    window.release()

            async with asyncio.TaskGroup() as tg:
                after = -1
                while page := await work.parts_after(after, PAGE):
                    after = page[-1].seq
                    for chunk in await self._settle_page(job, work, dataset, page, outcome):
                        if chunk.state == PartState.RUNNING:
                            flight[chunk.seq] = chunk
                            polls.add(chunk.seq)
                            continue
                        await window.acquire()
                        tg.create_task(guarded(chunk), name=f"claravine-send-{job.id}-{chunk.seq}")
            polls.sending_done()

        async def poller() -> None:
            while (due := await polls.next_due(POLL_BATCH)) is not None:
                changed = await self._poll_chunks(
                    src.path, dataset, fields, [flight[s] for s in due]
                )
                for c in changed:
                    del flight[c.seq]
                    polls.remove(c.seq)
                    if c.state == PartState.DONE:
                        tracker.confirmed(c.row_count or 0)
                    else:
                        outcome.fail(c)
                for s in due:
                    if s in flight:
                        polls.backoff(s)
                if changed:
                    await work.save(*changed)
                await tracker.save()

        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(sender(), name=f"claravine-sender-{job.id}")
                tg.create_task(poller(), name=f"claravine-poller-{job.id}")
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        return outcome

    async def _settle_page(
        self, job: Job, work: Work, dataset: str, page: list[Part], outcome: _Outcome
    ) -> list[Part]:
        """Of one page of the plan: the chunks still to send or to poll (a chunk left SENDING
        by a crash is looked up by name first, and adopted if it was created); settled ones
        are counted."""
        unsure = [c for c in page if c.state == PartState.SENDING]
        found = await self._find_sent(job, dataset, unsure) if unsure else {}
        out = []
        for c in page:
            outcome.total += 1
            if c.state == PartState.FAILED:
                outcome.fail(c)
                continue
            if c.state in (PartState.DONE, PartState.SKIPPED):
                continue
            if c.state == PartState.SENDING and c.name in found:
                c = replace(c, state=PartState.RUNNING, remote_id=found[c.name])
                await work.save(c)
                log.info("claravine_adopted", job_id=job.id, chunk=c.seq)
            out.append(c)
        return out

    async def _poll_chunks(
        self, path: Path, dataset: str, fields: list[str], chunks: list[Part]
    ) -> list[Part]:
        """The status of every chunk in `chunks`, asked at once (the rate window spaces the
        requests); the chunks that ended Complete or Failed, as they now are."""
        bodies = await asyncio.gather(*(self.status(dataset, str(c.remote_id)) for c in chunks))
        changed = []
        for chunk, body in zip(chunks, bodies, strict=True):
            status = str(body.get("status", "")).strip().lower()
            if status == STATUS_DONE:
                changed.append(replace(chunk, state=PartState.DONE, detail=None))
            elif status == STATUS_FAILED:
                lines: list[int] = []
                with contextlib.suppress(SourceError):  # the rows' lines, to point at them
                    _, lines = await asyncio.to_thread(read_span, path, fields, span_of(chunk))
                detail = _errors_text(body, lines)
                changed.append(replace(chunk, state=PartState.FAILED, detail=detail))
        return changed

    async def _send(
        self,
        job: Job,
        work: Work,
        dataset: str,
        chunk: Part,
        fields: list[str],
        rows: list[list[str]],
    ) -> Part:
        # Durable before the request leaves: after a crash, SENDING means "look it up first".
        await work.save(replace(chunk, state=PartState.SENDING))
        body = {"transactionName": chunk.name, "fields": fields, "rows": rows}
        for attempt in range(1, UNANSWERED_TRIES + 1):
            try:
                posted = await answer(
                    self.post_http, ClaravinePosted, "POST", f"/{_q(dataset)}/data", json=body
                )
                tx = posted.transactionUuid
                break
            except Rejected:
                raise
            except ProviderError as exc:  # no answer: did the submission happen?
                log.warning("claravine_post_unanswered", job_id=job.id, chunk=chunk.seq)
                found = await self._find_sent(job, dataset, [chunk])
                if chunk.name in found:
                    tx = found[chunk.name]
                    break
                if attempt == UNANSWERED_TRIES:  # provably not sent: the next attempt sends it
                    raise Unavailable(
                        self.name, f"chunk {chunk.seq + 1}: not sent ({exc.message}); will retry"
                    ) from None
                await asyncio.sleep(self.cfg.retry_base * 2**attempt)
        sent = replace(chunk, state=PartState.RUNNING, remote_id=str(tx))
        await work.save(sent)
        return sent

    async def _find_sent(self, job: Job, dataset: str, chunks: list[Part]) -> dict[str, str]:
        """Transactions of ours by name, in the window since the job was first started."""
        since = (job.submitted_at or job.created_at or utcnow()).date() - timedelta(days=1)
        names = {c.name for c in chunks if c.name}
        found: dict[str, str] = {}
        for tx in await self.transactions(dataset, since, utcnow().date() + timedelta(days=1)):
            name = str(tx.get("transactionName") or tx.get("name") or "")
            if name in names and tx.get("uuid"):
                found[name] = str(tx["uuid"])
        return found

    # --- transaction exports --------------------------------------------------------------------
    async def _export(self, job: Job, work: Work) -> dict[str, Any]:
        p = job.params
        dataset, fmt = str(p["dataset"]), str(p.get("format", "csv"))
        parts = await work.parts()
        if not parts:
            listed = await self.transactions(
                dataset, date.fromisoformat(p["start-date"]), date.fromisoformat(p["end-date"])
            )
            complete = [t for t in listed if str(t.get("status", "")).lower() == STATUS_DONE]
            parts = [
                Part(job_id=job.id, seq=i, state=PartState.PENDING, remote_id=str(t["uuid"]))
                for i, t in enumerate(complete)
                if t.get("uuid")
            ]
            await work.save(*parts)
            log.info("claravine_export_planned", job_id=job.id, transactions=len(parts))
        scratch = work.scratch_dir()
        for part in parts:
            if part.state == PartState.DONE and await asyncio.to_thread(_intact, part):
                continue
            target = scratch / f"tx-{part.seq:05d}.json"
            sink = AtomicFile(target).open()
            try:
                async with self.http.open(
                    "GET", f"/{_q(dataset)}/transaction/{_q(part.remote_id)}/data/", download=True
                ) as resp:
                    async for data in resp.content.iter_chunked(1 << 20):
                        await sink.write(data)
                        if sink.bytes > self.http.max_answer_bytes:
                            raise BadAnswer(
                                self.name,
                                "GET /{dataset}/transaction/{uuid}/data/: answer larger than "
                                f"{self.http.max_answer_bytes} bytes",
                            )
                await sink.commit(work.committer)
                await asyncio.to_thread(_check_table, self.name, target)
            except BaseException:
                sink.abort()
                raise
            await work.save(
                replace(
                    part,
                    state=PartState.DONE,
                    path=str(target),
                    bytes=sink.bytes,
                    sha256=sink.sha256,
                )
            )
        parts = await work.parts()
        return await asyncio.to_thread(_write_export, work, parts, fmt)


def _q(value: Any) -> str:
    """An id as one path segment: `../../etc/x` must not climb the API's paths."""
    return quote(str(value), safe="")


def _read_table(provider: str, path: Path) -> ClaravineTable:
    try:
        data = loads_json(path.read_bytes())
    except ValueError:
        raise BadAnswer(
            provider, "GET /{dataset}/transaction/{uuid}/data/: response is not JSON"
        ) from None
    return parse_answer(
        ClaravineTable, data, provider=provider, where="GET /{dataset}/transaction/{uuid}/data/"
    )


def _check_table(provider: str, path: Path) -> None:
    """A transaction's data, checked before its part is marked DONE (a file of another shape
    is removed, and the download is tried again by the job's next attempt)."""
    try:
        _read_table(provider, path)
    except BadAnswer:
        path.unlink(missing_ok=True)
        raise


def _read_chunk(path: Path, fields: list[str], chunk: Part) -> tuple[list[list[str]], str]:
    """A chunk's rows, from its byte range, and the hash of its content (blocking)."""
    rows, _ = read_span(path, fields, span_of(chunk))
    return rows, chunk_hash(fields, rows)


@dataclass
class _Outcome:
    """What a submission came to: chunks in all, and those Failed (the first 100 kept)."""

    total: int = 0
    failed: int = 0
    shown: list[Part] = field(default_factory=list)

    def fail(self, chunk: Part) -> None:
        self.failed += 1
        if len(self.shown) < 100:
            self.shown.append(chunk)


class _Polls:
    """When each sent chunk is next due a status check: first `initial` after its POST, then
    at gaps growing 1.5x up to `max_interval`."""

    def __init__(self, initial: float, max_interval: float) -> None:
        self.initial, self.max_interval = initial, max_interval
        self.due: dict[int, tuple[float, float]] = {}  # seq -> (when, current gap)
        self.changed = asyncio.Event()
        self.done = False

    def add(self, seq: int) -> None:
        self.due[seq] = (time.monotonic() + self.initial, self.initial)
        self.changed.set()

    def remove(self, seq: int) -> None:
        self.due.pop(seq, None)

    def backoff(self, seq: int) -> None:
        gap = min(self.max_interval, self.due[seq][1] * 1.5)
        self.due[seq] = (time.monotonic() + gap, gap)

    def sending_done(self) -> None:
        self.done = True
        self.changed.set()

    async def next_due(self, most: int) -> list[int] | None:
        """Up to `most` chunks due now (waiting for one); None once all are sent and settled."""
        while True:
            if not self.due:
                if self.done:
                    return None
                self.changed.clear()
                await self.changed.wait()
                continue
            now = time.monotonic()
            ready = [s for s, (at, _) in self.due.items() if at <= now]
            if ready:
                return sorted(ready, key=lambda s: self.due[s][0])[:most]
            first = min(at for at, _ in self.due.values())
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(first - now):
                    await self.changed.wait()


def _intact(part: Part) -> bool:
    return bool(part.path) and Path(str(part.path)).exists()


def _write_export(work: Work, parts: list[Part], fmt: str) -> dict[str, Any]:
    """Every transaction's rows in one file. Columns: the union of the transactions' headers in
    order of appearance (a missing value is empty); each row once, transaction by transaction."""
    tables = []
    for part in parts:
        parsed = _read_table(work.job.provider, Path(str(part.path)))
        tables.append((parsed.header, parsed.rows))
    columns: list[str] = []
    for header, _ in tables:
        columns += [h for h in header if h not in columns]
    final = work.result_path(fmt)
    sink = AtomicFile(final).open()
    rows = 0
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if fmt == "csv":
        writer.writerow(columns)
    for header, table in tables:
        for row in table:
            values = dict(zip(header, row, strict=False))
            if fmt == "csv":
                writer.writerow([values.get(c, "") for c in columns])
            else:
                buf.write(json.dumps({c: values.get(c, "") for c in columns}) + "\n")
            rows += 1
            if buf.tell() > 1 << 20:
                _sync_write(sink, buf)
    _sync_write(sink, buf)
    sink.commit_sync()
    work.drop_scratch()
    return {"path": str(final), "bytes": sink.bytes, "sha256": sink.sha256, "rows": rows}


def _sync_write(sink: AtomicFile, buf: io.StringIO) -> None:
    sink.write_sync(buf.getvalue().encode())
    buf.seek(0)
    buf.truncate()
