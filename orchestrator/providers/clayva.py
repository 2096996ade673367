"""Clayva event imports (api-docs/clayva-api.txt).

`clayva.events_import`: one job per new source file (JSON Lines, one event per line; or CSV with
`event`, `userId`, `anonymousId`, `timestamp`, `properties` and `context` columns, the last two
holding JSON objects). Every event is checked before anything is sent (name not empty, userId or
anonymousId, ISO 8601 timestamp, properties an object); rejects are reported as `file:line`.
Valid events go in `POST /events/batch` of at most 1,000, each batch a part in the ledger.

The API has no idempotency key, so delivery is at-least-once: a batch is recorded SENDING before
its POST and DONE after the answer; after a crash the one batch left SENDING is sent again (it
may have landed). Nothing else is ever sent twice, and batches whose exact events this pipeline
already delivered are skipped when a fixed file comes back.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import Field

from orchestrator.config import ProviderConfig
from orchestrator.domain import Job, Part, PartState
from orchestrator.errors import Rejected
from orchestrator.http import HttpClient
from orchestrator.imports.streams import SourceError
from orchestrator.outputs import AtomicFile
from orchestrator.providers.base import (
    StagedAdapterBase,
    Work,
    register_kind,
    register_provider,
)
from orchestrator.providers.claravine import chunk_hash
from orchestrator.providers.sources import (
    FileImportParams,
    expand_sources,
    load_source,
)

log = structlog.get_logger(__name__)
KIND = "clayva.events_import"
MAX_BATCH = 1000
CSV_COLUMNS = ("event", "userId", "anonymousId", "timestamp", "properties", "context")
DEFAULT_BATCH_RPM = 10.0  # "Batch Events" on the free tier; raise it for Pro (100)
MAX_REJECTS_SHOWN = 20


class EventsImportParams(FileImportParams):
    batchSize: int = Field(default=MAX_BATCH, ge=1, le=MAX_BATCH)
    on_invalid: Literal["fail", "skip"] = "fail"


register_kind(
    KIND,
    EventsImportParams,
    "Clayva events from JSON Lines / CSV files, POST /events/batch of ≤ 1,000",
    staged=True,
    expand=expand_sources,
)


def check_event(e: dict[str, Any]) -> str | None:
    """Why Clayva would refuse this event, or None."""
    name = e.get("event")
    if not isinstance(name, str) or not name.strip():
        return "event name is empty"
    if not e.get("userId") and not e.get("anonymousId"):
        return "userId or anonymousId is required"
    ts = e.get("timestamp")
    if ts is not None:
        text = str(ts)
        try:
            datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return f"timestamp {text!r} is not ISO 8601 (like 2026-11-21T10:30:00Z)"
        if "T" not in text:
            return f"timestamp {text!r} has no time (like 2026-11-21T10:30:00Z)"
    for key in ("properties", "context"):
        if e.get(key) is not None and not isinstance(e[key], dict):
            return f"{key} must be a JSON object"
    return None


def parse_events(path: Path, text: str) -> tuple[list[dict[str, Any]], list[int], list[str]]:
    """(valid events, their line numbers, rejects as 'file:line: reason')."""
    raw: list[tuple[int, Any]] = []
    rejects: list[str] = []
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                raw.append((n, json.loads(line)))
            except json.JSONDecodeError as exc:
                rejects.append(f"{path}:{n}: not JSON ({exc.msg})")
    else:
        raw, rejects = _csv_events(path, text)
    events, lines = [], []
    for n, e in raw:
        if not isinstance(e, dict):
            rejects.append(f"{path}:{n}: an event must be a JSON object")
            continue
        if (why := check_event(e)) is not None:
            rejects.append(f"{path}:{n}: {why}")
            continue
        events.append({k: v for k, v in e.items() if v not in (None, "")})
        lines.append(n)
    if not raw and not rejects:
        raise SourceError(f"{path}: no events")
    return events, lines, rejects


def _csv_events(path: Path, text: str) -> tuple[list[tuple[int, Any]], list[str]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if not header:
            raise SourceError(f"{path}:1: no header row")
        header = [h.strip() for h in header]
        unknown = [h for h in header if h not in CSV_COLUMNS]
        if unknown or "event" not in header:
            what = f"unknown column {unknown[0]!r}" if unknown else "no 'event' column"
            raise SourceError(f"{path}:1: {what} (columns: {', '.join(CSV_COLUMNS)})")
        out: list[tuple[int, Any]] = []
        rejects: list[str] = []
        start = reader.line_num + 1
        for row in reader:
            n, start = start, reader.line_num + 1
            if not row:
                continue
            if len(row) != len(header):
                rejects.append(f"{path}:{n}: {len(row)} values, the header has {len(header)}")
                continue
            e: dict[str, Any] = {k: v for k, v in zip(header, row, strict=True) if v != ""}
            bad = False
            for key in ("properties", "context"):
                if e.get(key):
                    try:
                        e[key] = json.loads(e[key])
                    except json.JSONDecodeError:
                        rejects.append(f"{path}:{n}: {key} is not JSON")
                        bad = True
            if not bad:
                out.append((n, e))
    except csv.Error as exc:
        raise SourceError(f"{path}:{reader.line_num}: {exc}") from None
    return out, rejects


@register_provider("clayva", "https://api.clayva.com/v1")
class ClayvaAdapter(StagedAdapterBase):
    default_concurrency = (
        1  # jobs at once unless `concurrency` is set: batches are rate limited per minute
    )

    def __init__(self, cfg: ProviderConfig) -> None:
        self.name = cfg.name or "clayva"
        self.cfg = cfg
        self.http = HttpClient.for_provider(
            cfg,
            self.name,
            headers={"Authorization": f"Bearer {cfg.secret()}", "Accept": "application/json"},
            requests_per_minute=cfg.requests_per_minute or DEFAULT_BATCH_RPM,
        )

    async def close(self) -> None:
        await self.http.close()

    async def check(self) -> dict[str, Any]:
        """GET /workspaces: the cheapest authenticated call (an admin API, 5-50/min)."""
        async with self.http.open("GET", "/workspaces") as resp:
            body = await resp.json(content_type=None)
            limit = resp.headers.get("X-RateLimit-Limit")
        data = body.get("data", []) if isinstance(body, dict) else []
        return {"workspaces": len(data) if isinstance(data, list) else None, "rate_limit": limit}

    def result_extension(self, job: Job) -> str:
        return "rejects.txt"

    async def run(self, job: Job, work: Work) -> dict[str, Any] | None:
        p = job.params
        try:
            src, (events, lines, rejects) = await asyncio.to_thread(load_source, p, parse_events)
        except SourceError as exc:
            raise Rejected(self.name, str(exc)) from None
        if rejects and p.get("on_invalid", "fail") == "fail":
            shown = "\n".join(rejects[:MAX_REJECTS_SHOWN])
            more = len(rejects) - MAX_REJECTS_SHOWN
            raise Rejected(
                self.name,
                f"{len(rejects)} invalid events, nothing sent (fix them, or set "
                f'on_invalid = "skip" to send the valid ones):\n{shown}'
                + (f"\n… and {more} more" if more > 0 else ""),
            )
        parts = await work.parts()
        if not parts:
            parts = await self._plan(job, work, events, int(p.get("batchSize", MAX_BATCH)))
        for batch in parts:
            if batch.state in (PartState.DONE, PartState.SKIPPED):
                continue
            first = batch.first_row or 0
            await self._send(
                job, work, batch, events[first : first + (batch.row_count or 0)], lines
            )
        if rejects:
            await asyncio.to_thread(self._write_rejects, work, rejects)
            log.warning("clayva_rejects_skipped", job_id=job.id, rejects=len(rejects))
        return src.result(len(events))

    async def _plan(
        self, job: Job, work: Work, events: list[dict[str, Any]], size: int
    ) -> list[Part]:
        parts = []
        for seq, first in enumerate(range(0, len(events), size)):
            chunk = events[first : first + size]
            digest = chunk_hash(["events"], [[json.dumps(e, sort_keys=True)] for e in chunk])
            parts.append(
                Part(
                    job_id=job.id,
                    seq=seq,
                    state=PartState.PENDING,
                    first_row=first,
                    row_count=len(chunk),
                    content_sha256=digest,
                )
            )
        found = await work.ledger.done_content(
            job.pipeline, [b.content_sha256 for b in parts if b.content_sha256]
        )
        done = {digest: part.job_id for digest, part in found.items()}
        parts = [
            replace(b, state=PartState.SKIPPED, detail=f"sent by job {done[b.content_sha256]}")
            if b.content_sha256 in done
            else b
            for b in parts
        ]
        await work.save(*parts)
        return parts

    async def _send(
        self, job: Job, work: Work, batch: Part, events: list[dict[str, Any]], lines: list[int]
    ) -> None:
        if batch.state == PartState.SENDING:
            log.warning("clayva_resending", job_id=job.id, batch=batch.seq)  # at-least-once
        await work.save(replace(batch, state=PartState.SENDING))
        first = batch.first_row or 0
        where = f"lines {lines[first]}-{lines[first + len(events) - 1]}"
        try:
            answer = await self.http.json("POST", "/events/batch", json={"events": events})
        except Rejected as exc:
            await work.save(replace(batch, state=PartState.FAILED, detail=exc.message))
            raise Rejected(
                self.name, f"{job.params.get('file')}: batch {batch.seq + 1} ({where}): {exc}"
            ) from None
        data = answer.get("data", {}) if isinstance(answer, dict) else {}
        await work.save(
            replace(
                batch,
                state=PartState.DONE,
                detail=f"accepted {data.get('accepted', len(events))} ({where})",
            )
        )

    def _write_rejects(self, work: Work, rejects: list[str]) -> None:
        sink = AtomicFile(work.result_path("rejects.txt")).open()
        sink.write_sync(("\n".join(rejects) + "\n").encode())
        sink.commit_sync()
