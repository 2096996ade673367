"""Import sources shared by every import kind: a glob of files, or the newest result of another
pipeline. One job per file not imported yet, keyed by the file's sha256."""

from __future__ import annotations

import asyncio
import glob
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.domain import JobState
from orchestrator.imports.streams import SourceError
from orchestrator.providers.base import Params

if TYPE_CHECKING:
    from orchestrator.ledger.store import Ledger

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SourceFile:
    path: Path
    text: str
    sha256: str
    size: int

    def result(self, rows: int) -> dict[str, Any]:
        """The result row of an import: the file itself, with what was sent of it."""
        return {"path": str(self.path), "bytes": self.size, "sha256": self.sha256, "rows": rows}


def read_source(path: Path) -> SourceFile:
    """A source file read once: its text (UTF-8, BOM allowed), sha256 and size; or a
    SourceError naming the file and line."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SourceError(f"{path}:{line}: not UTF-8 (byte {raw[exc.start]:#04x})") from None
    return SourceFile(path=path, text=text, sha256=hashlib.sha256(raw).hexdigest(), size=len(raw))


def load_source(params: dict[str, Any], parse: Callable[[Path, str], T]) -> tuple[SourceFile, T]:
    """The job's file, checked to be the one it was queued for, and parsed (blocking: run it in
    a thread)."""
    if not params.get("file"):
        raise SourceError("no source file on this job")
    src = read_source(Path(str(params["file"])))
    if params.get("sha256") and src.sha256 != params["sha256"]:
        raise SourceError(
            f"{src.path}: changed since this job was queued; the next scan imports the new "
            "version as its own job (what was already sent is not sent again)"
        )
    return src, parse(src.path, src.text)


class PipelineSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pipeline: str = Field(min_length=1)


class FileImportParams(Params):
    """Params every import kind shares: where files come from, and (set when a run is expanded
    into one job per new file) which file this job imports."""

    source: str | PipelineSource
    file: str | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")

    @field_validator("source")
    @classmethod
    def _glob(cls, v: str | PipelineSource) -> str | PipelineSource:
        if isinstance(v, str) and not v.strip():
            raise ValueError('source is empty: give a file glob or { pipeline = "name" }')
        return v


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
