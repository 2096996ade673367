"""Result files: atomic writes (temp file, fsync, rename, fsync dir), naming, row counts.

A partial download is only ever visible as a dot-file ending in `.part`; the final name appears
in one rename after the data is on disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path
from typing import IO

from orchestrator.domain import Job

JSON_COUNT_LIMIT = 64 * 1024 * 1024  # count JSON records only up to this size (bounded memory)
RECORD_KEYS = ("activities", "items", "rows", "data", "records")


def result_path(root: Path, job: Job, ext: str) -> Path:
    when = job.fire_time or job.created_at
    stamp = when.strftime("%Y%m%dT%H%M%SZ") if when else "manual"
    return root / job.pipeline / f"{job.pipeline}_{stamp}_job{job.id}.{ext}"


def part_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.part")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicFile:
    """A sink that hashes and counts what it writes, and becomes `final` only on commit()."""

    def __init__(self, final: Path) -> None:
        self.final = final
        self.tmp = part_path(final)
        self.bytes = 0
        self._sha = hashlib.sha256()
        self._f: IO[bytes] | None = None

    def open(self) -> AtomicFile:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self._f = self.tmp.open("wb")
        self.bytes = 0
        self._sha = hashlib.sha256()
        return self

    async def write(self, data: bytes) -> None:
        assert self._f is not None
        self._f.write(data)
        self._sha.update(data)
        self.bytes += len(data)

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    def _commit_sync(self) -> None:
        assert self._f is not None
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        self._f = None
        os.replace(self.tmp, self.final)
        _fsync_dir(self.final.parent)

    async def commit(self) -> None:
        await asyncio.to_thread(self._commit_sync)

    def abort(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        self.tmp.unlink(missing_ok=True)


def count_rows(path: Path, ext: str) -> int | None:
    """Data rows in a result file: CSV lines after the header; JSON records of the top-level
    array (or of its records field). None when the file is too large to count cheaply."""
    if ext == "csv":
        lines = 0
        last = b"\n"
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                lines += chunk.count(b"\n")
                last = chunk[-1:]
        if last != b"\n":
            lines += 1
        return max(0, lines - 1)
    if ext == "json" and path.stat().st_size <= JSON_COUNT_LIMIT:
        try:
            data = json.loads(path.read_bytes())
        except ValueError:
            return None
        if isinstance(data, list):
            return len(data)
        if isinstance(data, dict):
            for key in RECORD_KEYS:
                if isinstance(data.get(key), list):
                    return len(data[key])
    if ext == "jsonl":
        with path.open("rb") as f:
            return sum(1 for line in f if line.strip())
    return None
