"""Clari bulk ingest (api-docs/clari-api-openapi.yaml.txt, Data Ingestion API).

`clari.ingest`: one job per new source file of records — JSON in the API's own shape
(`[{"sourceEntity": ..., "records": [...]}]`) or JSON Lines, one record per line with its
`sourceEntity`. Records are checked first (`id`, `createdAt`, `updatedAt` in milliseconds,
`updatedAt >= createdAt`, no id twice in a source entity); the records, grouped by source entity,
are split into files of at most 10 MB, each a part in the ledger: `POST /ingest/bulk/entity/
{entity}` (multipart `FileData`, `mode`, `isLastBatch` on the last file of an initial load), then
`GET /ingest/job/{jobId}` until SUCCESS, FAILED or VALIDATION_FAILED (whose errorCode /
errorSummary list is recorded). Files go one at a time, in order — `isLastBatch` must come last —
and Clari's `429 TOO_MANY_REQUESTS` (concurrent ingestion jobs) is waited out. A file whose POST
may have landed before a crash is sent again: records are keyed by id, so the second copy
updates the same records.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
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
from orchestrator.imports.streams import SourceError
from orchestrator.providers.base import Work, register_kind
from orchestrator.providers.sources import (
    FileImportParams,
    expand_sources,
    load_source,
)

log = structlog.get_logger(__name__)
KIND = "clari.ingest"
MAX_FILE_BYTES = 10 * 1024 * 1024
MAX_ERRORS_SHOWN = 20


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


def parse_records(path: Path, text: str) -> list[tuple[str, dict[str, Any], str]]:
    """(sourceEntity, record, where) for every record, checked as Clari checks them."""
    out: list[tuple[str, dict[str, Any], str]] = []
    problems: list[str] = []
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{path}:{n}: not JSON ({exc.msg})")
                continue
            if not isinstance(rec, dict) or not rec.get("sourceEntity"):
                problems.append(f"{path}:{n}: each line must be a record with its sourceEntity")
                continue
            entity = str(rec.pop("sourceEntity"))
            out.append((entity, rec, f"{path}:{n}"))
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SourceError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from None
        if not isinstance(data, list):
            raise SourceError(f"{path}: must be an array of {{sourceEntity, records}} blocks")
        for b, block in enumerate(data):
            if not isinstance(block, dict) or not block.get("sourceEntity"):
                problems.append(f"{path}: block {b + 1}: sourceEntity is missing")
                continue
            records = block.get("records")
            if not isinstance(records, list):
                problems.append(f"{path}: block {b + 1}: records is missing")
                continue
            for r, rec in enumerate(records):
                where = f"{path}: {block['sourceEntity']} record {r + 1}"
                if not isinstance(rec, dict):
                    problems.append(f"{where}: not an object")
                    continue
                out.append((str(block["sourceEntity"]), rec, where))
    seen: set[tuple[str, str]] = set()
    for entity, rec, where in out:
        if (why := check_record(rec)) is not None:
            problems.append(f"{where}: {why}")
        elif (entity, str(rec["id"])) in seen:
            problems.append(f"{where}: id {rec['id']!r} appears twice in {entity}")
        else:
            seen.add((entity, str(rec["id"])))
    if problems:
        shown = "\n".join(problems[:MAX_ERRORS_SHOWN])
        more = len(problems) - MAX_ERRORS_SHOWN
        raise SourceError(
            f"{len(problems)} invalid records, nothing sent:\n{shown}"
            + (f"\n… and {more} more" if more > 0 else "")
        )
    if not out:
        raise SourceError(f"{path}: no records")
    return out


def check_record(rec: dict[str, Any]) -> str | None:
    if not rec.get("id"):
        return "id is missing"
    for key in ("createdAt", "updatedAt"):
        v = rec.get(key)
        if not isinstance(v, int) or isinstance(v, bool):
            return f"{key} must be a number of milliseconds since the epoch"
        if v < 10**11:  # before 1973 in ms: almost surely seconds
            return f"{key} {v} looks like seconds; Clari wants milliseconds"
    if rec["updatedAt"] < rec["createdAt"]:
        return "updatedAt is before createdAt"
    return None


def split_files(records: list[tuple[str, dict[str, Any], str]], limit: int) -> Iterator[bytes]:
    """The API's JSON shape, grouped by sourceEntity, in files of at most `limit` bytes."""
    blocks: dict[str, list[str]] = {}
    size = 2  # "[]"
    for entity, rec, where in records:
        item = json.dumps(rec, separators=(",", ":"))
        overhead = len(item) + 1 + (0 if entity in blocks else len(entity) + 40)
        if overhead + 2 > limit:
            raise SourceError(f"{where}: one record is larger than a file may be ({limit} bytes)")
        if size + overhead > limit and blocks:
            yield _render(blocks)
            blocks, size = {}, 2
            overhead = len(item) + 1 + len(entity) + 40
        blocks.setdefault(entity, []).append(item)
        size += overhead
    if blocks:
        yield _render(blocks)


def _render(blocks: dict[str, list[str]]) -> bytes:
    parts = [
        '{"sourceEntity":' + json.dumps(entity) + ',"records":[' + ",".join(items) + "]}"
        for entity, items in blocks.items()
    ]
    return ("[" + ",".join(parts) + "]").encode()


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
        p = job.params
        try:
            src, records = await asyncio.to_thread(load_source, p, parse_records)
        except SourceError as exc:
            raise Rejected(self.name, str(exc)) from None
        limit = int(p.get("maxFileBytes", MAX_FILE_BYTES))
        files = await asyncio.to_thread(lambda: list(split_files(records, limit)))
        parts = await work.parts()
        if not parts:
            parts = [
                Part(job_id=job.id, seq=i, state=PartState.PENDING, bytes=len(data))
                for i, data in enumerate(files)
            ]
            await work.save(*parts)
        last_seq = len(files) - 1
        for part in parts:
            if part.state == PartState.DONE:
                continue
            if part.state != PartState.RUNNING:
                part = await self._upload(job, work, part, files[part.seq], part.seq == last_seq)
            await self._await(job, work, part)
        return src.result(len(records))

    async def _upload(self, job: Job, work: Work, part: Part, data: bytes, last: bool) -> Part:
        if part.state == PartState.SENDING:
            log.warning("ingest_resending", job_id=job.id, part=part.seq)  # records keyed by id
        await work.save(replace(part, state=PartState.SENDING))
        mode = str(job.params.get("mode", "incremental"))
        query = {"mode": mode}
        if mode == "initial":
            query["isLastBatch"] = "true" if last else "false"
        form = aiohttp.FormData()
        form.add_field(
            "FileData", data, filename=f"part-{part.seq + 1}.json", content_type="application/json"
        )
        entity = job.params["entity"]
        answer = await self.http.json(
            "POST", f"/ingest/bulk/entity/{entity}", params=query, data=form
        )
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
