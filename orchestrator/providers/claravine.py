"""Claravine submissions (imports) and transaction exports (api-docs/claravine-api.txt).

`claravine.submission`: one job per new source file (keyed by its sha256, so a file is imported
once). The file is read and validated whole before anything is sent, then split into chunks of at
most 1,000 rows (the API's limit per POST). Each chunk is a part in the ledger with its own
`transactionName` (pipeline, file, chunk) and transaction uuid: SENDING is recorded before the
POST, so after a crash the chunk is looked up by name and never sent twice. Claravine fails
invalid data silently, so every chunk is polled until Complete or Failed; a Failed chunk is
reported with the file's line range and the API's detail. Chunks whose exact rows an earlier job
of the pipeline already imported are skipped: re-running a fixed file sends only what failed.

`claravine.transactions_export`: the transactions of a dataset in a date window; the data of each
Complete one is fetched (a part each, resumable) and written as one CSV or JSON Lines file.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

import structlog
from pydantic import Field, model_validator

from orchestrator.config import ProviderConfig
from orchestrator.domain import Job, Part, PartState
from orchestrator.errors import BadAnswer, ProviderError, Rejected, RemoteJobFailed, Unavailable
from orchestrator.http import HttpClient, loads_json
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
from orchestrator.providers.sources import (
    FileImportParams,
    SourceError,
    expand_sources,
    load_source,
    read_source,
)
from orchestrator.redaction import redact

if TYPE_CHECKING:
    pass

log = structlog.get_logger(__name__)
SUBMISSION, EXPORT = "claravine.submission", "claravine.transactions_export"
MAX_ROWS = 1000  # the API's limit per POST
THROTTLE_RETRIES = 4
UNANSWERED_TRIES = 3  # POSTs of one chunk whose answer was lost (each looked up first)
DEFAULT_KEY_HEADER, DEFAULT_SECRET_HEADER = "X-API-Key", "X-API-Secret"
STATUS_DONE, STATUS_FAILED = "complete", "failed"


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


# --- reading source files (pure, no network) ----------------------------------------------------


def read_rows(path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """(fields, rows, line number of each row) from a CSV (header row) or JSON Lines file."""
    return parse_rows(path, read_source(path).text)


def parse_rows(path: Path, text: str) -> tuple[list[str], list[list[str]], list[int]]:
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return _read_jsonl(path, text)
    return _read_csv(path, text)


def _read_csv(path: Path, text: str) -> tuple[list[str], list[list[str]], list[int]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None or not any(h.strip() for h in header):
            raise SourceError(f"{path}:1: no header row")
        header = [h.strip() for h in header]
        if (what := header_problem(header)) is not None:
            raise SourceError(f"{path}:1: header has {what}")
        rows, lines = [], []
        start = reader.line_num + 1
        for row in reader:
            if not row:  # blank line
                start = reader.line_num + 1
                continue
            if len(row) != len(header):
                raise SourceError(
                    f"{path}:{start}: {len(row)} values, the header has {len(header)}"
                )
            rows.append(row)
            lines.append(start)
            start = reader.line_num + 1
    except csv.Error as exc:
        raise SourceError(f"{path}:{reader.line_num}: {exc}") from None
    return header, rows, lines


def _read_jsonl(path: Path, text: str) -> tuple[list[str], list[list[str]], list[int]]:
    header: list[str] | None = None
    rows, lines = [], []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SourceError(f"{path}:{n}: not JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise SourceError(f"{path}:{n}: each line must be a JSON object")
        if header is None:
            header = list(obj)
        elif set(obj) != set(header):
            extra = len(set(obj) - set(header))
            missing = len(set(header) - set(obj))
            raise SourceError(
                f"{path}:{n}: keys differ from line 1"
                + (f"; {extra} more" if extra else "")
                + (f"; {missing} missing" if missing else "")
            )
        rows.append(["" if obj[k] is None else str(obj[k]) for k in header])
        lines.append(n)
    if header is None:
        raise SourceError(f"{path}: no records")
    return header, rows, lines


def header_problem(header: list[str]) -> str | None:
    """What is wrong with a CSV header, naming columns by position only: a file that was never
    meant as a header (a key file, say) must not have its first line quoted in the error."""
    first: dict[str, int] = {}
    for i, name in enumerate(header, start=1):
        if not name:
            return f"an empty column name (column {i})"
        if name in first:
            return f"repeated column (columns {first[name]} and {i})"
        first[name] = i
    return None


def chunk_hash(fields: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    data = json.dumps([list(fields), [list(r) for r in rows]], separators=(",", ":"))
    return hashlib.sha256(data.encode()).hexdigest()


def transaction_name(pipeline: str, file_sha: str, job_id: int, seq: int, total: int) -> str:
    """Unique per (pipeline, file, job, chunk): how a restarted daemon finds what it sent. The
    job is part of it so a retried job never mistakes an earlier job's submission for its own."""
    return f"orchestrator/{pipeline}/{file_sha[:16]}/job{job_id}/{seq + 1}-of-{total}"


def plan_chunks(job: Job, fields: list[str], rows: list[list[str]], per_post: int) -> list[Part]:
    total = max(1, -(-len(rows) // per_post))
    file_sha = str(job.params.get("sha256") or "")
    return [
        Part(
            job_id=job.id,
            seq=i,
            state=PartState.PENDING,
            name=transaction_name(job.pipeline, file_sha, job.id, i, total),
            first_row=i * per_post,
            row_count=len(rows[i * per_post : (i + 1) * per_post]),
            content_sha256=chunk_hash(fields, rows[i * per_post : (i + 1) * per_post]),
        )
        for i in range(total)
        if rows[i * per_post : (i + 1) * per_post]
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


def _listed_under(key: str) -> Any:
    """A before-validator: a bare array, or the array under `key`."""

    def wrap(data: Any) -> Any:
        return {key: data} if isinstance(data, list) else data

    return wrap


class ClaravineTemplate(Answer):
    uuid: RemoteId
    fields: list[str] | None = None


class ClaravineTemplates(Answer):
    """`GET /datasets`: `{"datasets": [...]}` (or the bare array)."""

    datasets: list[ClaravineTemplate]

    @model_validator(mode="before")
    @classmethod
    def _wrap(cls, data: Any) -> Any:
        return _listed_under("datasets")(data)


class ClaravineTransaction(Answer):
    uuid: RemoteId
    status: str = ""
    transactionName: str | None = None
    name: str | None = None


class ClaravineTransactions(Answer):
    """`GET /{dataset}/transactions`: `{"transactions": [...]}` (or the bare array)."""

    transactions: list[ClaravineTransaction]

    @model_validator(mode="before")
    @classmethod
    def _wrap(cls, data: Any) -> Any:
        return _listed_under("transactions")(data)


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


def describe_failure(path: str, lines: list[int], part: Part, detail: str) -> str:
    first = part.first_row or 0
    count = part.row_count or 0
    lo = lines[first] if first < len(lines) else first + 2
    hi = lines[first + count - 1] if 0 < count and first + count - 1 < len(lines) else lo
    return f"{path}: lines {lo}-{hi} (rows {first + 1}-{first + count}): {detail}"


def _errors_text(body: dict[str, Any], lines: list[int], first: int) -> str:
    """The API's own detail, with its row numbers (1-based within the chunk) as file lines."""
    errors = body.get("errors") or []
    parts = []
    for err in errors[:5]:
        if not isinstance(err, dict):
            continue
        row = err.get("row")
        where = ""
        if isinstance(row, int) and 0 < row and first + row - 1 < len(lines):
            where = f"line {lines[first + row - 1]}: "
        field = f"{err['field']}: " if err.get("field") else ""
        parts.append(f"{where}{field}{err.get('message', '')}")
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    text = "; ".join(parts)[:2000] + more
    return redact(text or str(body.get("message") or "Failed (no detail given)")[:2000])


@register_provider("claravine", "https://api.claravine.com/v1")
class ClaravineAdapter(StagedAdapterBase):
    default_concurrency = (
        2  # jobs at once unless `concurrency` is set: chunks are polled one by one
    )

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
            src, (fields, rows, lines) = await asyncio.to_thread(load_source, p, parse_rows)
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
        parts = await work.parts()
        if not parts:
            parts = plan_chunks(job, fields, rows, int(p.get("rowsPerPost", MAX_ROWS)))
            done = await work.ledger.done_content(
                job.pipeline, [c.content_sha256 for c in parts if c.content_sha256]
            )
            parts = [
                replace(
                    c,
                    state=PartState.SKIPPED,
                    remote_id=done[c.content_sha256].remote_id,
                    detail=f"imported by job {done[c.content_sha256].job_id}",
                )
                if c.content_sha256 in done
                else c
                for c in parts
            ]
            await work.save(*parts)
            skipped = sum(c.state == PartState.SKIPPED for c in parts)
            log.info("claravine_planned", job_id=job.id, chunks=len(parts), skipped=skipped)
        parts = await self._send_all(job, work, dataset, fields, rows, parts)
        parts = await self._await_all(job, work, dataset, parts, lines)
        failed = [c for c in parts if c.state == PartState.FAILED]
        if failed:
            listed = "\n".join(
                describe_failure(str(path), lines, c, c.detail or "Failed") for c in failed
            )
            raise RemoteJobFailed(
                self.name,
                f"{len(failed)} of {len(parts)} chunks Failed at Claravine "
                f"(the other rows were imported):\n{listed}",
            )
        return src.result(len(rows))

    async def _send_all(
        self,
        job: Job,
        work: Work,
        dataset: str,
        fields: list[str],
        rows: list[list[str]],
        parts: list[Part],
    ) -> list[Part]:
        out = []
        unsure = [c for c in parts if c.state == PartState.SENDING]
        found = await self._find_sent(job, dataset, unsure) if unsure else {}
        for chunk in parts:
            if chunk.state == PartState.SENDING and chunk.name in found:
                chunk = replace(chunk, state=PartState.RUNNING, remote_id=found[chunk.name])
                await work.save(chunk)
                log.info("claravine_adopted", job_id=job.id, chunk=chunk.seq)
            if chunk.state in (PartState.PENDING, PartState.SENDING):
                first = chunk.first_row or 0
                chunk = await self._send(
                    job, work, dataset, chunk, fields, rows[first : first + (chunk.row_count or 0)]
                )
            out.append(chunk)
        return out

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

    async def _await_all(
        self, job: Job, work: Work, dataset: str, parts: list[Part], lines: list[int]
    ) -> list[Part]:
        """Poll every RUNNING chunk until Complete or Failed, with growing gaps."""
        poll = self.cfg.poll
        delay = poll.initial
        by_seq = {c.seq: c for c in parts}
        while True:
            running = [c for c in by_seq.values() if c.state == PartState.RUNNING]
            if not running:
                return [by_seq[s] for s in sorted(by_seq)]
            await asyncio.sleep(delay)
            delay = min(poll.max_interval, delay * 1.5)
            changed = []
            for chunk in running:
                body = await self.status(dataset, str(chunk.remote_id))
                status = str(body.get("status", "")).strip().lower()
                if status == STATUS_DONE:
                    changed.append(replace(chunk, state=PartState.DONE, detail=None))
                elif status == STATUS_FAILED:
                    detail = _errors_text(body, lines, chunk.first_row or 0)
                    changed.append(replace(chunk, state=PartState.FAILED, detail=detail))
            if changed:
                await work.save(*changed)
                for c in changed:
                    by_seq[c.seq] = c

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
