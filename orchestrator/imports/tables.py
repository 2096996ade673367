"""Claravine submission sources: a CSV with a header row, or JSON Lines of flat objects (keys of
line 1 are the fields). Every row is a list of strings in the header's order."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from orchestrator.imports.streams import (
    SKIP,
    Block,
    JsonlPass,
    Lines,
    Problems,
    SourceError,
    Span,
    not_utf8,
    open_source,
    sha256_hex,
)

Row = list[str]
Progress = Callable[[int], None]
PROGRESS_EVERY = 50_000  # rows between progress reports


def is_jsonl(path: Path) -> bool:
    return path.suffix.lower() in (".jsonl", ".ndjson")


def chunk_hash(fields: list[str], rows: list[Row]) -> str:
    """Identity of a chunk's content: the same fields and rows give the same hash (compact JSON
    of [fields, rows], as json.dumps(separators=(",", ":"), ensure_ascii=False) writes it)."""
    return sha256_hex(orjson.dumps([fields, rows]))


@dataclass
class TablePlan:
    fields: list[str]
    spans: list[Span] = field(default_factory=list)
    rows: int = 0


class Chunker:
    """Cuts a pass's valid rows into spans of `per` rows: call `row` after each valid row (the
    reader's `pos`/`line` then end just past it), `flush` at the end."""

    def __init__(self, lines: Lines, per: int, digest: Callable[[list[Any]], str] | None) -> None:
        self.lines, self.per, self.digest = lines, per, digest
        self.spans: list[Span] = []
        self.rows = 0
        self.buf: list[Any] = []
        self.start, self.first_line = lines.pos, lines.line + 1

    def row(self, value: Any) -> None:
        self.buf.append(value)
        if len(self.buf) >= self.per:
            self.flush()

    def flush(self) -> None:
        if not self.buf:
            return
        lines = self.lines
        self.spans.append(
            Span(
                seq=len(self.spans),
                first_row=self.rows,
                row_count=len(self.buf),
                start=self.start,
                end=lines.pos,
                first_line=self.first_line,
                last_line=lines.line,
                digest=self.digest(self.buf) if self.digest is not None else None,
            )
        )
        self.rows += len(self.buf)
        self.buf = []
        self.start, self.first_line = lines.pos, lines.line + 1


def validate_table(
    path: Path, per_chunk: int, progress: Progress | None = None, limit: int = 100
) -> TablePlan:
    """One streaming pass: every row checked, chunks of `per_chunk` rows planned as byte ranges.
    Raises SourceError listing up to `limit` problems as `file:line: what` (and how many more)."""
    problems = Problems(path, limit=limit)
    jsonl = is_jsonl(path)
    with open_source(path) as f:
        if jsonl:
            check = _RowsPass(problems, per_chunk).run(f, progress)
            if problems:
                raise problems.error("problems")
            if check.header is None:
                raise SourceError(f"{path}: no records")
            return TablePlan(fields=check.header, spans=check.spans, rows=check.rows)
        lines = Lines(f)
        fields = _csv_header(lines, problems)
        if fields is None:
            raise problems.error("problems")
        # No content hash here: the sender hashes each chunk's rows when it reads them anyway.
        chunker = Chunker(lines, per_chunk, None)
        every = PROGRESS_EVERY
        buf = chunker.buf
        seen = False
        for _ in _CsvRows(lines, problems, len(fields)):
            seen = True
            if problems.count:  # keep checking, stop planning
                continue
            buf.append(None)
            if len(buf) >= per_chunk:
                chunker.flush()
                buf = chunker.buf
            every -= 1
            if not every and progress is not None:
                every = PROGRESS_EVERY
                progress(chunker.rows + len(chunker.buf))
        if problems:
            raise problems.error("problems")
        if not seen:
            return TablePlan(fields=fields)
        chunker.flush()
    return TablePlan(fields=fields, spans=chunker.spans, rows=chunker.rows)


class _RowsPass(JsonlPass):
    """Claravine's checks of a block of JSON Lines: each line an object with line 1's keys
    (the first object's keys are the fields). Rows are not built: the sender builds them."""

    header: list[str] | None = None
    _keys: set[str] | None = None

    def check(self, block: Block) -> list[int]:
        problems, first, keys = self.problems, block.first, self._keys
        valid: list[int] = []
        keep = valid.append
        for i, obj in enumerate(block.values):
            if obj.__class__ is not dict:
                if obj is not SKIP:
                    problems.add(first + i, "each line must be a JSON object")
            elif obj.keys() == keys:
                keep(i)
            elif keys is None:
                self.header, keys = list(obj), set(obj)
                self._keys = keys
                keep(i)
            else:
                problems.add(first + i, _keys_differ(set(obj), keys))
        return valid


def _keys_differ(got: set[str], keys: set[str]) -> str:
    extra = len(got - keys)  # counted, not quoted: keys are the file's text
    missing = len(keys - got)
    return (
        "keys differ from line 1"
        + (f"; {extra} more" if extra else "")
        + (f"; {missing} missing" if missing else "")
    )


def records_header(records: Iterator[Row]) -> list[str]:
    header: list[str] | None = getattr(records, "header", None)
    if header is None:
        raise TypeError("a JSON Lines reader knows its header once it gave a row")
    return list(header)


def read_fields(path: Path) -> list[str]:
    """The fields of a source: its CSV header, or the keys of its first JSON Lines record.
    SourceError if there is none (validation says why in full)."""
    problems = Problems(path)
    with open_source(path) as f:
        lines = Lines(f)
        if not is_jsonl(path):
            header = _csv_header(lines, problems)
        else:
            rows = _jsonl_rows(lines, problems, None)
            header = records_header(rows) if next(rows, None) is not None else None
    if header is None:
        raise problems.error("problems") if problems else SourceError(f"{path}: no records")
    return header


def read_span(path: Path, fields: list[str], span: Span) -> tuple[list[Row], list[int]]:
    """The rows of one planned chunk and their line numbers, read from its byte range only."""
    problems = Problems(path)
    jsonl = is_jsonl(path)
    with open_source(path) as f:
        lines = Lines(f, start=span.start, end=span.end, line=span.first_line - 1)
        rows: list[Row] = []
        numbers: list[int] = []
        if jsonl:
            for row in _jsonl_rows(lines, problems, fields):
                rows.append(row)
                numbers.append(lines.line)
        else:
            reader = _CsvRows(lines, problems, len(fields))
            for row in reader:
                rows.append(row)
                numbers.append(reader.first)
    if problems or len(rows) != span.row_count:
        raise SourceError(
            f"{path}: lines {span.first_line}-{span.last_line} no longer read as they were "
            f"validated ({len(rows)} rows, planned {span.row_count}); the file changed"
        )
    return rows, numbers


def _csv_header(lines: Lines, problems: Problems) -> Row | None:
    reader = csv.reader(lines.text(problems), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        problems.add(lines.line, str(exc))
        return None
    if problems:
        return None
    if header is None or not any(h.strip() for h in header):
        problems.add(1, "no header row")
        return None
    header = [h.strip() for h in header]
    first: dict[str, int] = {}
    what = None
    for i, name in enumerate(header, start=1):  # by position: the line may be anything
        if not name:
            what = f"an empty column name (column {i})"
            break
        if name in first:
            what = f"repeated column (columns {first[name]} and {i})"
            break
        first[name] = i
    if what is not None:
        problems.add(1, f"header has {what}")
        return None
    return header


class _CsvRows:
    """The valid rows of a CSV after its header (`first`: the line the last one began on);
    every other row is a problem. csv.reader goes on after an error, and so does this."""

    def __init__(self, lines: Lines, problems: Problems, width: int) -> None:
        self.lines, self.problems, self.width = lines, problems, width
        self.first = 0

    def __iter__(self) -> Iterator[Row]:
        lines, problems, width = self.lines, self.problems, self.width
        reader = csv.reader(lines.text(problems), strict=True)
        base = lines.line  # csv counts lines from where it starts
        prev = 0
        long = lines.overlong
        while True:
            try:
                for row in reader:
                    if lines.overlong != long:  # a line of this record was cut out
                        long = lines.overlong
                        problems.add(long, "line longer than 16 MiB")
                        prev = reader.line_num
                        continue
                    if len(row) != width:
                        if row:
                            problems.add(
                                base + prev + 1, f"{len(row)} values, the header has {width}"
                            )
                        prev = reader.line_num
                        continue
                    self.first = base + prev + 1
                    prev = reader.line_num
                    yield row
                return
            except csv.Error as exc:
                prev = reader.line_num
                problems.add(base + prev, str(exc))


_LONG_NUMBER = re.compile(rb"\d{19}")


def parse_json(raw: bytes) -> Any:
    """orjson's speed; json's exact integers past 64 bits (orjson makes some of them floats)
    and json's message when orjson refuses the line."""
    if _LONG_NUMBER.search(raw) is not None:
        return json.loads(raw)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def json_problem(raw: bytes, exc: ValueError) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return not_utf8(raw) or "not UTF-8"
    return f"not JSON ({getattr(exc, 'msg', exc)})"


class _JsonlRows:
    """Rows of a JSON Lines file of flat objects; `header` is line 1's keys (or given)."""

    def __init__(self, lines: Lines, problems: Problems, fields: list[str] | None) -> None:
        self.lines, self.problems, self.header = lines, problems, fields

    def __iter__(self) -> Iterator[Row]:
        problems = self.problems
        keys = set(self.header or ())
        for n, _, obj in self.lines.objects(problems):
            if obj.__class__ is not dict:
                problems.add(n, "each line must be a JSON object")
                continue
            header = self.header
            if header is None:
                header = self.header = list(obj)
                keys = set(obj)
            elif obj.keys() != keys:
                problems.add(n, _keys_differ(set(obj), keys))
                continue
            yield [
                "" if (v := obj[k]) is None else v if v.__class__ is str else str(v) for k in header
            ]


def _jsonl_rows(lines: Lines, problems: Problems, fields: list[str] | None) -> Iterator[Row]:
    return _GenWithHeader(_JsonlRows(lines, problems, fields))


class _GenWithHeader:
    """An iterator over a reader's rows that also answers `header`."""

    def __init__(self, reader: _JsonlRows) -> None:
        self.reader = reader
        self.it = iter(reader)

    @property
    def header(self) -> list[str] | None:
        return self.reader.header

    def __iter__(self) -> Iterator[Row]:
        return self

    def __next__(self) -> Row:
        return next(self.it)
