"""An import's progress as the ledger shows it (`jobs list`, `jobs watch`, the status page):
rows validated while the validation pass runs, then the rate of confirmed rows (for the ETA).
Written at most once a second, whatever the pace of the import."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

from orchestrator.domain import ImportProgress

SAVE_EVERY = 1.0  # seconds between progress writes
RATE_WINDOW = 30.0  # seconds of confirmations the rate is taken over


def file_stamp(path: Path) -> tuple[int, int]:
    """(size, mtime in ns): what tells a restart whether the file may have changed."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


class Tracker:
    """Counts of one import job. `validated` may be set from the validation thread (a plain
    int store); everything else runs on the event loop."""

    def __init__(
        self, save: Callable[[ImportProgress], Awaitable[None]], progress: ImportProgress
    ) -> None:
        self._save = save
        self.progress = progress
        self.validated = progress.rows_validated
        self._confirmed = 0
        self._samples: deque[tuple[float, int]] = deque()
        self._saved_at = 0.0

    def set(self, **changes: object) -> None:
        self.progress = replace(self.progress, **changes)  # type: ignore[arg-type]

    def confirmed(self, rows: int) -> None:
        """`rows` more rows confirmed by the provider (or sent, where sending confirms)."""
        now = time.monotonic()
        self._confirmed += rows
        self._samples.append((now, self._confirmed))
        while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW:
            self._samples.popleft()

    def rate(self) -> float | None:
        if len(self._samples) < 2:
            return None
        (t0, c0), (t1, c1) = self._samples[0], self._samples[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else None

    async def save(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._saved_at < SAVE_EVERY:
            return
        self._saved_at = now
        self.set(rows_validated=self.validated, rate=self.rate())
        await self._save(self.progress)

    @contextlib.asynccontextmanager
    async def ticking(self) -> AsyncIterator[None]:
        """Save every SAVE_EVERY seconds while the block runs (a validation pass in a thread)."""

        async def tick() -> None:
            while True:
                await asyncio.sleep(SAVE_EVERY)
                await self.save()

        task = asyncio.create_task(tick(), name=f"progress-{self.progress.job_id}")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self.save(force=True)
