"""Retention: `[retention] results = "90d"`, `jobs = "400d"` (default: keep forever), applied by
`orchestrator prune` and once a day by the daemon.

The decision is pure (`decide`), over facts read from the ledger and the disk; it never picks:
- the newest successful job of a pipeline, nor its result (the next `source = { pipeline }`
  import and every "last good export" question need it);
- a file a job not yet finished will read (an import queued for it), nor that job;
- a job not finished;
- a file outside `[output] dir` (an import's result *is* its source file: the user's, not ours);
- an import job whose source file still exists: its idempotency key is what stops that file being
  imported again.
Files go first, then rows: a crash in between leaves rows whose file is gone, which the next
prune removes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from orchestrator.config import Config
from orchestrator.domain import TERMINAL, JobState
from orchestrator.ledger.store import Ledger, utcnow

log = structlog.get_logger(__name__)
LAST_RUN = "retention.last_run"
EVERY = timedelta(days=1)


@dataclass(frozen=True, kw_only=True, slots=True)
class JobFacts:
    id: int
    pipeline: str
    state: JobState
    finished_at: datetime | None
    result_path: str | None = None
    result_bytes: int | None = None
    result_ours: bool = False  # the result file lies under [output] dir
    import_file: str | None = None  # the file an import job reads (params.file)
    import_file_exists: bool = False


@dataclass(kw_only=True, slots=True)
class Decision:
    results: list[JobFacts] = field(default_factory=list)  # delete the file and results row
    jobs: list[JobFacts] = field(default_factory=list)  # delete the job (and its file if ours)
    kept_newest: list[int] = field(default_factory=list)  # newest success per pipeline
    kept_pending: list[int] = field(default_factory=list)  # old, but a pending job reads it
    kept_imports: list[int] = field(default_factory=list)  # old, but its source file exists


def newest_successes(jobs: Sequence[JobFacts]) -> set[int]:
    best: dict[str, JobFacts] = {}
    for j in jobs:
        if j.state != JobState.SUCCEEDED or j.finished_at is None:
            continue
        cur = best.get(j.pipeline)
        if cur is None or (j.finished_at, j.id) > (cur.finished_at, cur.id):
            best[j.pipeline] = j
    return {j.id for j in best.values()}


def decide(
    jobs: Sequence[JobFacts],
    now: datetime,
    results_age: timedelta | None,
    jobs_age: timedelta | None,
) -> Decision:
    """What to delete (pure; see the module docstring for what is never picked)."""
    out = Decision()
    newest = newest_successes(jobs)
    pending_reads = {j.import_file for j in jobs if j.state not in TERMINAL and j.import_file}
    for j in jobs:
        if j.state not in TERMINAL or j.finished_at is None:
            continue
        age = now - j.finished_at
        old_job = jobs_age is not None and age > jobs_age
        old_result = results_age is not None and age > results_age
        if not (old_job or (old_result and j.result_path)):
            continue
        if j.id in newest:
            out.kept_newest.append(j.id)
        elif j.result_path is not None and j.result_path in pending_reads:
            out.kept_pending.append(j.id)
        elif old_job and j.import_file is not None and j.import_file_exists:
            out.kept_imports.append(j.id)
            if old_result and j.result_ours:
                out.results.append(j)
        elif old_job:
            out.jobs.append(j)
        elif j.result_ours:
            out.results.append(j)
    return out


# --- facts and effects -------------------------------------------------------------------------


def _inside(path: str, root: Path) -> bool:
    try:
        return Path(os.path.realpath(path)).is_relative_to(root)
    except (OSError, ValueError):
        return False


def facts_of(rows: Sequence[dict[str, Any]], output_dir: Path) -> list[JobFacts]:
    """Ledger rows (Ledger.retention_rows) + the disk → JobFacts (blocking: stats files)."""
    root = Path(os.path.realpath(output_dir))
    out = []
    for r in rows:
        params = r["params"] or {}
        source = params.get("file") if isinstance(params.get("file"), str) else None
        out.append(
            JobFacts(
                id=r["id"],
                pipeline=r["pipeline"],
                state=JobState(r["state"]),
                finished_at=r["finished_at"],
                result_path=r["path"],
                result_bytes=r["bytes"],
                result_ours=r["path"] is not None and _inside(r["path"], root),
                import_file=source,
                import_file_exists=source is not None and Path(source).is_file(),
            )
        )
    return out


def _unlink(path: str) -> int:
    """Delete one of our result files; the bytes it freed (0 if it was already gone)."""
    try:
        size = os.stat(path).st_size
        os.unlink(path)
    except FileNotFoundError:
        return 0
    return size


@dataclass(kw_only=True, slots=True)
class PruneReport:
    dry_run: bool
    results_age_days: float | None
    jobs_age_days: float | None
    decision: Decision
    freed_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = self.decision
        files = [j for j in [*d.results, *d.jobs] if j.result_ours and j.result_path]
        return {
            "dry_run": self.dry_run,
            "results_older_than_days": self.results_age_days,
            "jobs_older_than_days": self.jobs_age_days,
            "result_files": len(files),
            "result_bytes": sum(j.result_bytes or 0 for j in files),
            "freed_bytes": self.freed_bytes,
            "jobs": len(d.jobs),
            "kept_newest_success": d.kept_newest,
            "kept_for_pending_import": d.kept_pending,
            "kept_import_source_exists": d.kept_imports,
            "files": [j.result_path for j in files],
            "job_ids": [j.id for j in d.jobs],
        }


async def prune(cfg: Config, ledger: Ledger, *, dry_run: bool) -> PruneReport:
    results_age = _age(cfg.retention.results)
    jobs_age = _age(cfg.retention.jobs)
    report = PruneReport(
        dry_run=dry_run,
        results_age_days=_days(results_age),
        jobs_age_days=_days(jobs_age),
        decision=Decision(),
    )
    if results_age is None and jobs_age is None:
        return report  # keep forever
    cutoff = utcnow() - min(a for a in (results_age, jobs_age) if a is not None)
    rows = await ledger.retention_rows(cutoff)
    facts = await asyncio.to_thread(facts_of, rows, cfg.output.dir)
    report.decision = decision = decide(facts, utcnow(), results_age, jobs_age)
    if dry_run:
        return report
    doomed = [j for j in [*decision.results, *decision.jobs] if j.result_ours and j.result_path]
    for j in doomed:  # files first: a crash now leaves rows to remove next time
        report.freed_bytes += await asyncio.to_thread(_unlink, j.result_path or "")
    await ledger.delete_results([j.id for j in decision.results])
    await ledger.delete_jobs([j.id for j in decision.jobs])
    log.info(
        "pruned",
        result_files=len(doomed),
        freed_bytes=report.freed_bytes,
        jobs=len(decision.jobs),
    )
    return report


def _age(seconds: float | None) -> timedelta | None:
    return None if seconds is None else timedelta(seconds=seconds)


def _days(age: timedelta | None) -> float | None:
    return None if age is None else age.total_seconds() / 86400


async def run_daily(cfg: Config, ledger: Ledger, stopping: asyncio.Event) -> None:
    """The daemon's side loop: prune once a day (the last run is kept in the ledger, so a
    restart does not prune again, nor wait another day)."""
    while not stopping.is_set():
        last = await ledger.ops_value(LAST_RUN)
        due = last is None or utcnow() - datetime.fromisoformat(last) >= EVERY
        if due:
            await prune(cfg, ledger, dry_run=False)
            await ledger.set_ops_value(LAST_RUN, utcnow().isoformat())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3600):
                await stopping.wait()
