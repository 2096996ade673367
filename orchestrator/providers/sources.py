"""Import sources shared by every import kind: a glob of files, or the newest result of another
pipeline. One job per file not imported yet, keyed by the file's sha256."""

from __future__ import annotations

import asyncio
import glob
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.domain import JobState

if TYPE_CHECKING:
    from orchestrator.ledger.store import Ledger


class SourceError(ValueError):
    """Bad input file; the message names the file and line."""


def read_text(path: Path) -> str:
    """A source file's text (UTF-8, BOM allowed), or a SourceError naming the file and line."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SourceError(f"{path}:{line}: not UTF-8 (byte {raw[exc.start]:#04x})") from None


class PipelineSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pipeline: str = Field(min_length=1)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _list_files(pattern: str) -> list[Path]:
    """Files matching the glob, oldest first (hidden and partial files left out)."""
    found = [Path(m) for m in glob.glob(os.path.expanduser(pattern))]
    files = [p for p in found if p.is_file() and not p.name.startswith(".")]
    return sorted(files, key=lambda p: (p.stat().st_mtime, str(p)))


async def expand_sources(
    ledger: Ledger, pipeline: str, params: dict[str, Any], _key: str
) -> list[tuple[str, dict[str, Any]]]:
    """One job per source file not imported yet (by sha256): a glob's files, oldest first, or
    the newest result of another pipeline."""
    if params.get("file"):  # already one file (a retry)
        return [(f"file:{pipeline}:{params.get('sha256')}", params)]
    source = params["source"]
    if isinstance(source, dict):
        done = await ledger.list_jobs(
            states=[JobState.SUCCEEDED], pipeline=str(source["pipeline"]), limit=1
        )
        files = [Path(done[0].result_path)] if done and done[0].result_path else []
    else:
        files = await asyncio.to_thread(_list_files, str(source))
    out = []
    for path in files:
        sha = await asyncio.to_thread(file_sha256, path)
        out.append((f"file:{pipeline}:{sha}", {**params, "file": str(path), "sha256": sha}))
    return out
