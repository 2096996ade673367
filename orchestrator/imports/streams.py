"""What every import format shares: lines of a file with their byte offsets and line numbers,
the list of problems a validation pass reports, and the chunk plan.

A source is read twice, never held: a validation pass (every record checked, chunks planned as
byte ranges) and then, chunk by chunk, the sending pass, which seeks to a chunk's range and
parses only that. Memory is one chunk plus the plan, whatever the file's size.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

MAX_PROBLEMS = 100  # shown; the rest are counted ("and N more")
MAX_LINE = 16 * 1024 * 1024  # a longer line is a problem, not a reason to hold the file
BOM = b"\xef\xbb\xbf"


class SourceError(ValueError):
    """Bad input file; the message names the file and line."""


@dataclass
class Problems:
    """The first MAX_PROBLEMS problems of a pass as `file:line: what`, and how many in all."""

    path: Path
    limit: int = MAX_PROBLEMS
    shown: list[str] = field(default_factory=list)
    count: int = 0
    sink: Callable[[str], None] | None = None  # is given every problem (a side file)

    def add(self, line: int | None, what: str) -> None:
        self.count += 1
        if len(self.shown) < self.limit or self.sink is not None:
            text = f"{self.path}:{line}: {what}" if line is not None else f"{self.path}: {what}"
            if len(self.shown) < self.limit:
                self.shown.append(text)
            if self.sink is not None:
                self.sink(text)

    def __bool__(self) -> bool:
        return self.count > 0

    def listing(self) -> str:
        more = self.count - len(self.shown)
        return "\n".join(self.shown) + (f"\n… and {more} more" if more > 0 else "")

    def error(self, what: str) -> SourceError:
        """One error for the whole pass: `N <what>, nothing sent:` and the listing."""
        return SourceError(f"{self.count} {what}, nothing sent:\n{self.listing()}")


@dataclass(frozen=True, kw_only=True, slots=True)
class Span:
    """A planned chunk: rows first_row .. first_row+row_count of the file (counting valid rows
    only), found between byte offsets start and end, on lines first_line .. last_line."""

    seq: int
    first_row: int
    row_count: int
    start: int
    end: int
    first_line: int
    last_line: int
    digest: str | None = None  # content hash: an earlier job's identical chunk is not resent


@dataclass
class Lines:
    """Binary lines of an open file from byte `start` (a line boundary) up to `end`, counting
    offsets and line numbers as they go. `pos` is the offset just past the last line given;
    `line` its number. A line over MAX_LINE is cut into pieces (each flagged in `overlong`)."""

    f: IO[bytes]
    start: int = 0
    line: int = 0  # number of the line before `start`
    end: int | None = None
    pos: int = 0
    overlong: int = 0  # line number of the last over-long line met

    def __post_init__(self) -> None:
        self.pos = self.start

    def __iter__(self) -> Iterator[bytes]:
        """From where the last iteration stopped (a new iterator continues, never rewinds)."""
        f, end = self.f, self.end
        f.seek(self.pos)
        readline = f.readline
        while end is None or self.pos < end:
            raw = readline(MAX_LINE)
            if not raw:
                return
            self.pos += len(raw)
            self.line += 1
            if len(raw) == MAX_LINE and raw[-1] != 10:  # no newline within MAX_LINE
                self._skip_rest(raw)
                continue  # dropped: the caller reports `overlong`
            if self.pos == len(raw) and raw.startswith(BOM):
                raw = raw[3:]
            yield raw

    def text(self, problems: Problems) -> Iterator[str]:
        """The same lines decoded (for csv.reader); a line that is not UTF-8 is a problem, and
        is read anyway (with U+FFFD) so the reader's line count stays right."""
        f, end = self.f, self.end
        f.seek(self.pos)
        readline = f.readline
        while end is None or self.pos < end:
            raw = readline(MAX_LINE)
            if not raw:
                return
            self.pos += len(raw)
            self.line += 1
            if len(raw) == MAX_LINE and raw[-1] != 10:
                self._skip_rest(raw)
                yield "\n"
                continue
            try:
                yield raw.decode("utf-8-sig" if self.pos == len(raw) else "utf-8")
            except UnicodeDecodeError:
                problems.add(self.line, not_utf8(raw) or "not UTF-8")
                yield raw.decode("utf-8", "replace")

    def objects(self, problems: Problems) -> Iterator[tuple[int, int, Any]]:
        """(line, start offset, value) of every JSON line from `pos` to `end`, read a block
        at a time (lines split in C, not one readline call each): the fast path of JSON Lines.
        `pos`/`line` are just past the value's line when it is given. A blank line is
        skipped; a line that is not JSON, not UTF-8 or over MAX_LINE is a problem."""
        f, end = self.f, self.end
        f.seek(self.pos)
        read_at = pos = self.pos
        n = self.line
        carry = b""
        skipping = False  # inside an over-long line, dropping bytes up to its newline
        loads, table, run = orjson.loads, _DIGITS, _LONG_RUN
        while True:
            want = BLOCK if end is None else min(BLOCK, end - read_at)
            block = f.read(want) if want > 0 else b""
            read_at += len(block)
            if skipping:
                cut = block.find(b"\n")
                if cut < 0 and block:
                    pos += len(block)
                    continue
                pos += (cut + 1) if cut >= 0 else len(block)
                block = block[cut + 1 :] if cut >= 0 else b""
                skipping = False
            if not block:
                lines = [carry] if carry else []
                last = True
            else:
                data = carry + block if carry else block
                cut = data.rfind(b"\n") + 1
                if not cut:
                    if len(data) > MAX_LINE:
                        n += 1
                        problems.add(n, "line longer than 16 MiB")
                        self.overlong = n
                        pos += len(data)
                        carry, skipping = b"", True
                    else:
                        carry = data
                    continue
                lines = data[:cut].split(b"\n")
                lines.pop()
                carry = data[cut:]
                last = False
            for raw in lines:
                n += 1
                start = pos
                pos += len(raw) + 1
                if start == 0 and raw.startswith(BOM):
                    raw = raw[3:]
                if len(raw) > MAX_LINE:
                    problems.add(n, "line longer than 16 MiB")
                    self.overlong = n
                    continue
                try:
                    if run in raw.translate(table):  # an integer orjson would make a float
                        raise ValueError
                    value = loads(raw)
                except ValueError:
                    try:
                        value = json.loads(raw)
                    except ValueError as exc:
                        if raw.strip():
                            problems.add(n, _json_problem(raw, exc))
                        continue
                self.pos, self.line = pos, n
                yield n, start, value
            if last:
                return

    def _skip_rest(self, raw: bytes) -> None:
        self.overlong = self.line
        readline = self.f.readline
        while (rest := readline(MAX_LINE)) and rest[-1] != 10:
            self.pos += len(rest)
        self.pos += len(rest)


BLOCK = 1 << 20
# Digits as b"0", everything else as b" ": 19 zeros in a row mean an integer of 19+ digits.
_DIGITS = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))
_LONG_RUN = b"0" * 19


def _json_problem(raw: bytes, exc: ValueError) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return not_utf8(raw) or "not UTF-8"
    return f"not JSON ({getattr(exc, 'msg', exc)})"


def not_utf8(raw: bytes) -> str | None:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 (byte {raw[exc.start]:#04x})"
    return None


class Planner:
    """Groups valid records into chunks of at most `per_chunk` rows (and, when `size_of` is
    given, at most `max_bytes` of rendered size), as byte ranges. Feed it every valid record's
    (line, start, end, value); `spans` are emitted as each chunk closes."""

    def __init__(
        self,
        per_chunk: int,
        digest_of: Callable[[list[Any]], str] | None = None,
        *,
        size_of: Callable[[Any], int] | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self.per_chunk = per_chunk
        self.digest_of = digest_of
        self.size_of = size_of
        self.max_bytes = max_bytes
        self.rows = 0
        self._open: list[Any] = []
        self._first = self._start = self._end = self._first_line = self._last_line = 0
        self._size = 0
        self._seq = 0

    def add(self, line: int, start: int, end: int, value: Any) -> Span | None:
        closed = None
        size = self.size_of(value) if self.size_of is not None else 0
        if self._open and (
            len(self._open) >= self.per_chunk
            or (self.max_bytes is not None and self._size + size > self.max_bytes)
        ):
            closed = self.close()
        if not self._open:
            self._first, self._start, self._first_line, self._size = self.rows, start, line, 0
        self._open.append(value if self.digest_of is not None else None)
        self._end, self._last_line = end, line
        self._size += size
        self.rows += 1
        return closed

    def close(self) -> Span | None:
        if not self._open:
            return None
        span = Span(
            seq=self._seq,
            first_row=self._first,
            row_count=len(self._open),
            start=self._start,
            end=self._end,
            first_line=self._first_line,
            last_line=self._last_line,
            digest=self.digest_of(self._open) if self.digest_of is not None else None,
        )
        self._seq += 1
        self._open = []
        return span


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first error a task group collected (its own groups opened): what callers that
    decide on the error's type (retry, fail, wait) must see."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def open_source(path: Path) -> IO[bytes]:
    """The one place an import source is opened for reading: never through a symlink, only a
    regular file (a FIFO would block the reader), with the checks made on the opened file
    (providers/sources.py:open_source)."""
    from orchestrator.providers.sources import open_source as open_checked

    return os.fdopen(open_checked(path), "rb")
