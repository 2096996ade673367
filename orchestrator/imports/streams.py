"""What every import format shares: lines of a file with their byte offsets and line numbers,
the list of problems a validation pass reports, and the chunk plan.

A source is read twice, never held: a validation pass (every record checked, chunks planned as
byte ranges) and then, chunk by chunk, the sending pass, which seeks to a chunk's range and
parses only that. Memory is one chunk plus the plan, whatever the file's size.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Self

import msgspec
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
    _lines: list[int] = field(default_factory=list)  # of `shown`, ascending

    def add(self, line: int | None, what: str) -> None:
        self.count += 1
        if len(self.shown) < self.limit or self.sink is not None or line is not None:
            text = f"{self.path}:{line}: {what}" if line is not None else f"{self.path}: {what}"
            if self.sink is not None:
                self.sink(text)
            self._keep(line or 0, text)

    def _keep(self, line: int, text: str) -> None:
        """Keep the `limit` problems of the lowest lines (a block's parse problems are met
        before the record checks of its earlier lines), in file order."""
        shown, lines = self.shown, self._lines
        if len(shown) < self.limit:
            at = bisect.bisect_right(lines, line)
        elif self.limit and line < lines[-1]:
            shown.pop()
            lines.pop()
            at = bisect.bisect_right(lines, line)
        else:
            return
        shown.insert(at, text)
        lines.insert(at, line)

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

    def _raw(self) -> Iterator[bytes | None]:
        """Each line's bytes from `pos` (None for one over MAX_LINE, dropped to its newline;
        the caller reports `overlong`), counting offsets and line numbers."""
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
                yield None
                continue
            yield raw

    def __iter__(self) -> Iterator[bytes]:
        """From where the last iteration stopped (a new iterator continues, never rewinds)."""
        for raw in self._raw():
            if raw is None:
                continue  # dropped: the caller reports `overlong`
            yield raw[3:] if self.pos == len(raw) and raw.startswith(BOM) else raw

    def text(self, problems: Problems) -> Iterator[str]:
        """The same lines decoded (for csv.reader); a line that is not UTF-8 is a problem, and
        is read anyway (with U+FFFD) so the reader's line count stays right."""
        for raw in self._raw():
            if raw is None:
                yield "\n"
                continue
            try:
                yield raw.decode("utf-8-sig" if self.pos == len(raw) else "utf-8")
            except UnicodeDecodeError:
                problems.add(self.line, not_utf8(raw) or "not UTF-8")
                yield raw.decode("utf-8", "replace")

    def blocks(self, problems: Problems, *, parse: bool = True) -> Iterator[Block]:
        """The JSON lines from `pos` to `end` a block at a time: read in BLOCK-sized reads, split
        and parsed in C (one `map(orjson.loads, ...)` per block while every line parses; line by
        line, with each problem reported, where one does not). A blank line is skipped; a line
        that is not JSON, not UTF-8 or over MAX_LINE is a problem. `pos`/`line` are past a
        block once it is given. A line longer than a read is gathered piece by piece (joined
        once: no copy per read). With `parse` false a block's values are left to its reader
        (`Block.parse`)."""
        f, end = self.f, self.end
        f.seek(self.pos)
        read_at = pos = self.pos
        n = self.line
        pending: list[bytes] = []  # the start of a line no read has ended yet
        held = 0  # its length
        skipping = False  # inside an over-long line, dropping bytes up to its newline
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
                if pending:
                    carry = b"".join(pending)
                    got = Block(n + 1, pos, [carry], problems, parse=parse)
                    self.pos, self.line = pos + len(carry) + 1, n + 1
                    yield got
                return
            cut = block.rfind(b"\n") + 1
            if not cut:
                if held + len(block) > MAX_LINE:
                    n += 1
                    problems.add(n, "line longer than 16 MiB")
                    self.overlong = n
                    pos += held + len(block)
                    pending, held, skipping = [], 0, True
                else:
                    pending.append(block)
                    held += len(block)
                continue
            whole = block if cut == len(block) else block[:cut]
            if pending:
                pending.append(whole)
                whole = b"".join(pending)
            rest = block[cut:]
            pending, held = ([rest], len(rest)) if rest else ([], 0)
            raws = whole.split(b"\n")
            raws.pop()
            got = Block(n + 1, pos, raws, problems, whole, parse=parse)
            n += len(raws)
            pos += len(whole)
            self.pos, self.line = pos, n
            if got.overlong:
                self.overlong = got.overlong
            yield got

    def objects(self, problems: Problems) -> Iterator[tuple[int, int, Any]]:
        """(line, start offset, value) of every JSON line from `pos` to `end` (see `blocks`).
        `pos`/`line` are just past the value's line when it is given."""
        for block in self.blocks(problems):
            first, raws, values = block.first, block.raws, block.values
            pos = block.start
            for i, value in enumerate(values):
                start = pos
                pos += len(raws[i]) + 1
                if value is not SKIP:
                    self.pos, self.line = pos, first + i
                    yield first + i, start, value

    def _skip_rest(self, raw: bytes) -> None:
        self.overlong = self.line
        readline = self.f.readline
        while (rest := readline(MAX_LINE)) and rest[-1] != 10:
            self.pos += len(rest)
        self.pos += len(rest)


class _Skip:
    """A line with no value: blank, or a problem (reported)."""


SKIP: Any = _Skip()


class Block:
    """Lines `raws` of a file (`whole`: their bytes, newlines included), the first at line
    `first` and byte `start`, each with its JSON value in `values` (SKIP for a blank line or a
    problem, reported to `problems`) — parsed at once, or left empty for the reader to `parse`
    (a reader with a faster way for the common block)."""

    __slots__ = ("_at", "first", "overlong", "raws", "start", "values", "whole")

    def __init__(
        self,
        first: int,
        start: int,
        raws: list[bytes],
        problems: Problems,
        whole: bytes | None = None,
        *,
        parse: bool = True,
    ) -> None:
        self.first, self.start, self.raws = first, start, raws
        self.overlong = 0
        self._at = (0, start)
        self.whole = b"\n".join(raws) if whole is None else whole
        self.values: list[Any] = self.parse(problems) if parse else []

    def parse(self, problems: Problems) -> list[Any]:
        """Every line's value (SKIP where there is none: a problem is reported)."""
        raws, whole = self.raws, self.whole
        parse = raws
        if self.start == 0 and raws[0].startswith(BOM):
            parse = [raws[0][3:], *raws[1:]]
        if len(whole) <= MAX_LINE and _LONG_RUN not in whole.translate(_DIGITS):
            try:
                return list(map(orjson.loads, parse))
            except ValueError:  # a line that is not JSON, or blank: line by line
                pass
        return self._one_by_one(parse, problems)

    def offset(self, i: int) -> int:
        """The byte offset of line `i` of the block (`len(raws)`: just past the last line)."""
        j, off = self._at
        if i < j:
            j, off = 0, self.start
        off += sum(map(len, self.raws[j:i])) + (i - j)
        self._at = (i, off)
        return off

    def _one_by_one(self, parse: list[bytes], problems: Problems) -> list[Any]:
        values: list[Any] = []
        add = values.append
        loads, table, run = orjson.loads, _DIGITS, _LONG_RUN
        n = self.first - 1
        for raw in parse:
            n += 1
            if len(raw) > MAX_LINE:
                problems.add(n, "line longer than 16 MiB")
                self.overlong = n
                add(SKIP)
                continue
            try:
                if run in raw.translate(table):  # an integer orjson would make a float
                    raise ValueError
                add(loads(raw))
            except ValueError:
                try:
                    add(_loads_text(raw))
                except ValueError as exc:
                    if raw.strip():
                        problems.add(n, _json_problem(raw, exc))
                    add(SKIP)
        return values


def _loads_text(raw: bytes) -> Any:
    """A line orjson refused or would read wrong (an integer past 64 bits), by the json module;
    what orjson refuses besides is refused too: text that is not UTF-8 (the json module would
    take UTF-16, and a surrogate written as bytes), a lone surrogate escape (`"\\ud800"`: no
    UTF-8 body can carry either, and they failed the sending pass, not validation), and
    nesting past the json module's depth (a RecursionError, not a problem, before)."""
    try:
        value = json.loads(raw.decode("utf-8").removeprefix("\ufeff"))  # a BOM, as ever
        json.dumps(value, ensure_ascii=False).encode()
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except UnicodeEncodeError:
        raise ValueError("a lone surrogate escape in a string, not a character") from None
    return value


# 32 KiB (~200-250 records): a block's parsed values are held while it is checked. Under
# 700 containers (CPython's young-generation threshold) held at once, a block is freed before
# the collector ever runs; 256 KiB blocks triggered collections that re-scanned the whole heap,
# which made the block loop slower than a bare line loop.
BLOCK = 1 << 15
# Digits as b"0", everything else as b" ": 19 zeros in a row mean an integer of 19+ digits.
_DIGITS = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))
_LONG_RUN = b"0" * 19


def _json_problem(raw: bytes, exc: ValueError) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return not_utf8(raw) or "not UTF-8"
    return f"not JSON ({getattr(exc, 'msg', exc)})"


def read_typed(block: Block, decode: Callable[[bytes], Any]) -> list[Any] | None:
    """Each line of `block` read by a typed msgspec `decode` (the fields a kind checks, nothing
    else built), or None if a line is not one (not JSON, not of the type, blank) or the block
    is not all UTF-8 (msgspec checks only the bytes it reads): that block is parsed instead."""
    whole = block.whole
    if not whole.isascii() and not_utf8(whole) is not None:
        return None
    try:
        return list(map(decode, block.raws))
    except (msgspec.DecodeError, RecursionError):
        return None


def not_utf8(raw: bytes) -> str | None:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 (byte {raw[exc.start]:#04x})"
    return None


class JsonlPass:
    """The validation pass of a JSON Lines source, the same for every import kind: the file's
    blocks (`Lines.blocks`: parsed in C, parse problems reported) each given whole to the
    kind's `check` — one Python loop over a block's values, no call per valid record — which
    returns the indices of the block's valid records; those are cut into spans of `per` valid
    records. A span begins where the one before it ended (the first at the file's start) and
    ends just past its last record's line. A kind that plans otherwise (Clari ingest: upload
    files by size, records added in bulk) overrides `take`, which checks and plans a block."""

    def __init__(self, problems: Problems, per: int = 1) -> None:
        self.problems, self.per = problems, per
        self.spans: list[Span] = []
        self.rows = 0  # valid records met (planned in spans or in the open one)
        self._open = 0  # records in the open span
        self._start = 0  # byte offset of the open span
        self._first_line = 1
        self.rows_planned = 0  # valid records in closed spans

    parse_blocks = True  # False: `take` parses a block only where its own faster way fails

    def check(self, block: Block) -> list[int]:
        raise NotImplementedError

    def run(self, f: IO[bytes], progress: Callable[[int], None] | None = None) -> Self:
        """Every block of `f` checked and planned; `progress` is told the valid records so
        far after each block."""
        for block in Lines(f).blocks(self.problems, parse=self.parse_blocks):
            self.take(block)
            if progress is not None:
                progress(self.validated)
        self.close()
        return self

    def take(self, block: Block) -> None:
        self.plan(block, self.check(block))

    @property
    def validated(self) -> int:
        return self.rows

    def plan(self, block: Block, valid: list[int]) -> None:
        """Cut `valid` (indices of `block`'s values, ascending) into spans of `per`."""
        j, n, per = 0, len(valid), self.per
        self.rows += n
        while j < n:
            take = min(per - self._open, n - j)
            j += take
            self._open += take
            self._last = (block, valid[j - 1])
            if self._open == per:
                self._cut()

    def close(self) -> list[Span]:
        if self._open:
            self._cut()
        return self.spans

    _last: tuple[Block, int]

    def _cut(self) -> None:
        block, i = self._last
        end, last_line = block.offset(i + 1), block.first + i
        self.spans.append(
            Span(
                seq=len(self.spans),
                first_row=self.rows_planned,
                row_count=self._open,
                start=self._start,
                end=end,
                first_line=self._first_line,
                last_line=last_line,
            )
        )
        self.rows_planned += self._open
        self._open = 0
        self._start, self._first_line = end, last_line + 1


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
