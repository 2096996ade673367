"""The start of every import job: is the job's file still the one it was queued for, and must
it be validated (no plan yet) or can sending resume from the plan in the ledger?"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from orchestrator.domain import ImportProgress, Part, PartState
from orchestrator.imports.progress import Tracker, file_stamp
from orchestrator.imports.streams import SourceError, Span
from orchestrator.providers.base import Work
from orchestrator.providers.sources import check_source, file_sha256


@dataclass
class Opened:
    path: Path
    sha256: str
    size: int
    tracker: Tracker
    planned: bool  # the ledger holds a complete plan: resume without reading the file again

    def result(self, rows: int) -> dict[str, Any]:
        """The result row of an import: the file itself, with what was sent of it."""
        return {"path": str(self.path), "bytes": self.size, "sha256": self.sha256, "rows": rows}


async def open_import(work: Work) -> Opened:
    """The job's file, checked against the sha256 it was queued with: by hashing it when there
    is no plan yet or when its size or mtime moved since the plan was made; a file that
    changed is refused (the next scan imports the new version as a job of its own)."""
    params = work.job.params
    if not params.get("file"):
        raise SourceError("no source file on this job")
    path = Path(str(params["file"]))
    # A symlink, a FIFO, a file reached through a symlinked directory outside the glob's base,
    # or one over the pipeline's maxSourceBytes: refused before anything is read.
    await asyncio.to_thread(check_source, path, params)
    try:
        size, mtime = await asyncio.to_thread(file_stamp, path)
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror or exc}") from None
    progress = await work.import_progress()
    planned = progress is not None and progress.phase != "validating"
    queued = str(params.get("sha256") or "")
    stamp_same = progress is not None and (progress.source_size, progress.source_mtime_ns) == (
        size,
        mtime,
    )
    sha = queued
    if not (planned and stamp_same and queued):
        sha = await asyncio.to_thread(file_sha256, path)
        if queued and sha != queued:
            raise SourceError(
                f"{path}: changed since this job was queued; the next scan imports the new "
                "version as its own job (what was already sent is not sent again)"
            )
    if progress is None:
        progress = ImportProgress(job_id=work.job.id)
    tracker = Tracker(work.save_progress, progress)
    tracker.set(source_size=size, source_mtime_ns=mtime)
    return Opened(path=path, sha256=sha, size=size, tracker=tracker, planned=planned)


def plan_parts(job_id: int, spans: Iterable[Span], old: dict[int, Part]) -> list[Part]:
    """A part per planned span, carrying its rows, byte range and lines: a new one PENDING,
    or the part an earlier plan of the job left at that place (what was sent stays sent)."""
    return [part_of(job_id, span, old.get(span.seq)) for span in spans]


def part_of(job_id: int, span: Span, old: Part | None = None) -> Part:
    """A chunk's part: a PENDING one (or `old`, kept) placed at `span` in the source."""
    return replace(
        old or Part(job_id=job_id, seq=span.seq, state=PartState.PENDING),
        first_row=span.first_row,
        row_count=span.row_count,
        byte_start=span.start,
        byte_end=span.end,
        first_line=span.first_line,
        last_line=span.last_line,
    )


def span_of(part: Part) -> Span:
    """The planned span a part was made from."""
    return Span(
        seq=part.seq,
        first_row=part.first_row or 0,
        row_count=part.row_count or 0,
        start=part.byte_start or 0,
        end=part.byte_end or 0,
        first_line=part.first_line or 1,
        last_line=part.last_line or 1,
        digest=part.content_sha256,
    )
