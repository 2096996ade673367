"""Import sources shared by every import kind: a glob of files, or the newest result of another
pipeline. One job per file not imported yet, keyed by the file's sha256."""

from __future__ import annotations

import asyncio
import errno
import glob
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

import structlog
from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.domain import JobState
from orchestrator.imports.streams import SourceError
from orchestrator.providers.base import Params

if TYPE_CHECKING:
    from orchestrator.ledger.store import Ledger

T = TypeVar("T")
log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class SourceFile:
    path: Path
    text: str
    sha256: str
    size: int

    def result(self, rows: int) -> dict[str, Any]:
        """The result row of an import: the file itself, with what was sent of it."""
        return {"path": str(self.path), "bytes": self.size, "sha256": self.sha256, "rows": rows}


_MAGIC = re.compile(r"[*?[]")
_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def glob_base(pattern: str) -> Path:
    """The directory a glob lists from: its leading components without wildcards, resolved.
    Files must really be inside it: a symlinked directory a wildcard walks into may not lead
    out."""
    parts = Path(os.path.expanduser(pattern)).parts
    lead: list[str] = []
    for part in parts[:-1]:
        if _MAGIC.search(part):
            break
        lead.append(part)
    return Path(*lead).resolve() if lead else Path.cwd().resolve()


def _opened_path(fd: int, path: Path) -> Path:
    """Where an open descriptor really is (Linux tells; elsewhere the name resolved now)."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return path.resolve()


def open_source(path: Path, within: Path | None = None, max_bytes: int | None = None) -> int:
    """A descriptor of `path` if it is a regular file, not a symlink, (given `within`) really
    inside that directory and (given `max_bytes`) no bigger; else a SourceError that names the
    file and nothing of its content. The checks are made on the opened file, so swapping the
    name meanwhile does not get past."""
    try:
        fd = os.open(path, _OPEN)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SourceError(f"{path}: is a symlink; import sources must be files") from None
        raise SourceError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SourceError(f"{path}: not a regular file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise _too_big(path, max_bytes)
        if within is not None and not _opened_path(fd, path).is_relative_to(within):
            raise SourceError(f"{path}: resolves outside {within}; not read")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _too_big(path: Path, max_bytes: int) -> SourceError:
    return SourceError(
        f"{path}: larger than maxSourceBytes ({max_bytes:,} bytes): split it, or raise "
        "maxSourceBytes in the pipeline's params"
    )


def check_source(path: Path, params: dict[str, Any]) -> None:
    """The job's file as an import may read it: a regular file, not a symlink, really inside its
    glob's base directory and, where the pipeline sets `maxSourceBytes`, no bigger; else a
    SourceError naming the file and nothing of its content."""
    source = params.get("source")
    within = glob_base(source) if isinstance(source, str) else None
    cap = params.get("maxSourceBytes")
    os.close(open_source(path, within, int(cap) if cap else None))


class PipelineSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pipeline: str = Field(min_length=1)


class FileImportParams(Params):
    """Params every import kind shares: where files come from, and (set when a run is expanded
    into one job per new file) which file this job imports."""

    source: str | PipelineSource
    maxSourceBytes: int | None = Field(default=None, ge=1)  # ours: bigger files fail unread
    file: str | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")

    @field_validator("source")
    @classmethod
    def _glob(cls, v: str | PipelineSource) -> str | PipelineSource:
        if isinstance(v, str) and not v.strip():
            raise ValueError('source is empty: give a file glob or { pipeline = "name" }')
        if isinstance(v, str) and any(ord(c) < 32 or ord(c) == 127 for c in v):
            raise ValueError("source has a control character (a NUL cannot be in a file name)")
        return v


def file_sha256(path: Path) -> str:
    with os.fdopen(open_source(path), "rb") as f:
        return _sha256(f)


def _sha256(f: BinaryIO) -> str:
    h = hashlib.sha256()
    while chunk := f.read(1 << 20):
        h.update(chunk)
    return h.hexdigest()


def source_sha256(path: Path, within: Path | None) -> str:
    with os.fdopen(open_source(path, within), "rb") as f:
        return _sha256(f)


def _skip_reason(path: Path, base: Path) -> str | None:
    """Why a glob match is not imported: '' to leave it out quietly (hidden and partial files,
    directories), a reason to warn about, or None to import it."""
    if path.name.startswith("."):
        return ""
    if path.is_symlink():
        return "a symlink (import sources must be files in the glob's directory)"
    if not path.resolve().is_relative_to(base):
        return f"resolves outside {base} (through a symlinked directory)"
    return None if path.is_file() else ""


def _list_files(pattern: str) -> list[Path]:
    """Files matching the glob, oldest first. Symlinks, and files reached through a symlinked
    directory outside the glob's base, are skipped with a warning: whoever can drop a file in
    the inbox must not get the daemon to read (and send, or quote) any other file it can."""
    base = glob_base(pattern)
    files: list[tuple[float, str, Path]] = []
    for match in glob.glob(os.path.expanduser(pattern)):
        path = Path(match)
        try:
            why = _skip_reason(path, base)
            if why is None:
                files.append((path.lstat().st_mtime, match, path))
        except OSError as exc:  # gone meanwhile, or unreadable
            why = exc.strerror or str(exc)
        if why:
            log.warning("import_source_skipped", path=match, reason=why)
    return [path for *_, path in sorted(files)]


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
    within = glob_base(source) if isinstance(source, str) else None
    out = []
    for path in files:
        try:
            sha = await asyncio.to_thread(source_sha256, path, within)
        except SourceError as exc:  # swapped for a link, or removed, since it was listed
            log.warning("import_source_skipped", path=str(path), reason=str(exc))
            continue
        out.append((f"file:{pipeline}:{sha}", {**params, "file": str(path), "sha256": sha}))
    return out
