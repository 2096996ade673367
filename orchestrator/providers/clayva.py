"""Clayva event imports (api-docs/clayva-api.txt).

`clayva.events_import`: one job per new source file (JSON Lines, one event per line; or CSV with
`event`, `userId`, `anonymousId`, `timestamp`, `properties` and `context` columns, the last two
holding JSON objects). Every event is checked before anything is sent (name not empty, userId or
anonymousId, ISO 8601 timestamp, properties an object); rejects are reported as `file:line`.
Valid events go in `POST /events/batch` of at most 1,000, each batch a part in the ledger.

The file is read streaming (orchestrator/imports/events.py): one pass checks every event and
plans batches as byte ranges (rejects go to the side file as they are met, the first 100 and
their count on the job), then each batch is re-read from its range as it is sent.

The API has no idempotency key, so delivery is at-least-once: a batch is recorded SENDING before
its POST and DONE after the answer; after a crash the one batch left SENDING is sent again (it
may have landed). Nothing else is ever sent twice, and batches whose exact events this pipeline
already delivered are skipped when a fixed file comes back.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any, Literal

import structlog
from pydantic import Field

from orchestrator.config import ProviderConfig
from orchestrator.domain import Job, Part, PartState
from orchestrator.errors import Rejected
from orchestrator.http import HttpClient
from orchestrator.imports.events import (
    batch_hash,
    check_event,
    read_events,
    read_header,
    validate_events,
)
from orchestrator.imports.flow import Opened, open_import, plan_parts, span_of
from orchestrator.imports.streams import SourceError
from orchestrator.outputs import AtomicFile
from orchestrator.providers.answers import Answer, answer
from orchestrator.providers.base import (
    StagedAdapterBase,
    Work,
    register_kind,
    register_provider,
)
from orchestrator.providers.sources import FileImportParams, expand_sources

log = structlog.get_logger(__name__)
KIND = "clayva.events_import"
MAX_BATCH = 1000
DEFAULT_BATCH_RPM = 10.0  # "Batch Events" on the free tier; raise it for Pro (100)
MAX_REJECTS_SHOWN = 20
PAGE = 1000  # batches of the plan read from (and written to) the ledger at a time
__all__ = ["check_event"]


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


class ClayvaWorkspaces(Answer):
    """`GET /workspaces` (check-config --online)."""

    data: list[Any]


class _Accepted(Answer):
    accepted: int | None = None


class ClayvaBatchAccepted(Answer):
    """`POST /events/batch`: `{"success": true, "data": {"accepted": n, ...}}`."""

    data: _Accepted = _Accepted()


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
        listing = await answer(self.http, ClayvaWorkspaces, "GET", "/workspaces")
        return {"workspaces": len(listing.data), "rate_limit": self.http.last_rate_limit}

    def result_extension(self, job: Job) -> str:
        return "rejects.txt"

    async def run(self, job: Job, work: Work) -> dict[str, Any] | None:
        p = job.params
        try:
            src = await open_import(work)
            header = await asyncio.to_thread(read_header, src.path)
        except SourceError as exc:
            raise Rejected(self.name, str(exc)) from None
        if not src.planned or not await work.parts_after(-1, 1):
            await self._plan(job, work, src)
        rejected = src.tracker.progress.rows_rejected
        if rejected and p.get("on_invalid", "fail") == "fail":
            shown = "\n".join(src.tracker.progress.rejects[:MAX_REJECTS_SHOWN])
            more = rejected - min(MAX_REJECTS_SHOWN, len(src.tracker.progress.rejects))
            raise Rejected(
                self.name,
                f"{rejected} invalid events, nothing sent (fix them, or set "
                f'on_invalid = "skip" to send the valid ones):\n{shown}'
                + (f"\n… and {more} more" if more > 0 else ""),
            )
        await src.tracker.save(force=True)
        src.tracker.confirmed(0)
        await self._send_all(job, work, src, header)
        if rejected:
            log.warning("clayva_rejects_skipped", job_id=job.id, rejects=rejected)
        src.tracker.set(phase="done")
        await src.tracker.save(force=True)
        return src.result(src.tracker.progress.rows_validated)

    async def _plan(self, job: Job, work: Work, src: Opened) -> None:
        """Check every event (streaming), writing rejects to the side file as they are met;
        plan the valid ones in batches; batches this pipeline already delivered are SKIPPED."""
        tracker = src.tracker
        tracker.set(phase="validating")
        side = AtomicFile(work.result_path("rejects.txt")).open()

        def progress(rows: int) -> None:
            tracker.validated = rows

        def reject(text: str) -> None:
            side.write_sync((text + "\n").encode())

        size = int(job.params.get("batchSize", MAX_BATCH))
        try:
            async with tracker.ticking():
                plan = await asyncio.to_thread(
                    validate_events, src.path, size, progress=progress, reject=reject
                )
                tracker.validated = plan.rows
        except SourceError as exc:
            side.abort()
            raise Rejected(self.name, str(exc)) from None
        except BaseException:
            side.abort()
            raise
        rejects = plan.rejects
        if rejects:
            await asyncio.to_thread(side.commit_sync)
            tracker.set(
                rows_rejected=rejects.count,
                rejects=tuple(rejects.shown),
                rejects_path=str(work.result_path("rejects.txt")),
            )
        else:
            side.abort()
        old = {c.seq: c for c in await work.parts()}  # planned before by an older version
        for at in range(0, len(plan.spans), PAGE):
            await work.save(*plan_parts(job.id, plan.spans[at : at + PAGE], old))
        tracker.set(phase="sending")

    async def _send_all(self, job: Job, work: Work, src: Opened, header: list[str] | None) -> None:
        """Every batch not delivered yet, in file order, one POST at a time (the per-minute
        window is the brake; at most one batch is ever left SENDING by a crash), the next batch
        read from its byte range while the current one is on its way. The plan is read from
        the ledger a page at a time."""
        after = -1
        while page := await work.parts_after(after, PAGE):
            after = page[-1].seq
            todo = [b for b in page if b.state not in (PartState.DONE, PartState.SKIPPED)]
            await self._send_page(job, work, src, header, todo)

    async def _send_page(
        self, job: Job, work: Work, src: Opened, header: list[str] | None, todo: list[Part]
    ) -> None:
        tracker = src.tracker

        def read(batch: Part) -> asyncio.Task[tuple[list[dict[str, Any]], list[int]]]:
            return asyncio.create_task(
                asyncio.to_thread(read_events, src.path, span_of(batch), header),
                name=f"clayva-read-{job.id}-{batch.seq}",
            )

        if not todo:
            return
        ahead: asyncio.Task[tuple[list[dict[str, Any]], list[int]]] | None = read(todo[0])
        try:
            for i, batch in enumerate(todo):
                events, lines = await read(batch) if ahead is None else await ahead
                ahead = read(todo[i + 1]) if i + 1 < len(todo) else None
                digest = batch_hash(events)
                if batch.state == PartState.PENDING:  # events this pipeline already delivered?
                    done = (await work.ledger.done_content(job.pipeline, [digest])).get(digest)
                    if done is not None:
                        await work.save(
                            replace(
                                batch,
                                state=PartState.SKIPPED,
                                content_sha256=digest,
                                detail=f"sent by job {done.job_id}",
                            )
                        )
                        continue
                batch = replace(batch, content_sha256=digest)
                await self._send(job, work, batch, events, lines)
                tracker.confirmed(len(events))
                await tracker.save()
        finally:
            if ahead is not None:
                ahead.cancel()
                await asyncio.gather(ahead, return_exceptions=True)

    async def _send(
        self, job: Job, work: Work, batch: Part, events: list[dict[str, Any]], lines: list[int]
    ) -> None:
        if batch.state == PartState.SENDING:
            log.warning("clayva_resending", job_id=job.id, batch=batch.seq)  # at-least-once
        await work.save(replace(batch, state=PartState.SENDING))
        where = f"lines {lines[0]}-{lines[-1]}"
        try:
            accepted = await answer(
                self.http, ClayvaBatchAccepted, "POST", "/events/batch", json={"events": events}
            )
        except Rejected as exc:
            await work.save(replace(batch, state=PartState.FAILED, detail=exc.message))
            raise Rejected(
                self.name, f"{job.params.get('file')}: batch {batch.seq + 1} ({where}): {exc}"
            ) from None
        count = accepted.data.accepted if accepted.data.accepted is not None else len(events)
        await work.save(
            replace(
                batch,
                state=PartState.DONE,
                detail=f"accepted {count} ({where})",
            )
        )
