"""Clari ingest sources: JSON in the API's own shape (`[{"sourceEntity": ..., "records":
[...]}]`, read with ijson's streaming parser) or JSON Lines, one record per line with its
`sourceEntity`. Records are grouped into upload files of at most `limit` bytes.

Chunks of JSON Lines are byte ranges; chunks of the array form are record ranges (a JSON array
has no line to seek to), which the sending pass reaches by parsing past the records before
them — reading, never sending, them again. A block's `sourceEntity` must come before its
`records` (the order the API documents): records are never held to wait for their entity.
An id twice in one entity is refused within each upload file, as Clari refuses it; across
files the later record updates the earlier one, as Clari's ingest does by id."""

from __future__ import annotations

import io
import json
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import ijson
import orjson

from orchestrator.imports.streams import Lines, Problems, SourceError, Span, open_source
from orchestrator.imports.tables import PROGRESS_EVERY, Progress, is_jsonl

Record = dict[str, Any]
ENTITY_OVERHEAD = 40  # bytes of `{"sourceEntity":…,"records":[…]}` around an entity's name


def check_record(rec: dict[str, Any]) -> str | None:
    if not rec.get("id"):
        return "id is missing"
    for key in ("createdAt", "updatedAt"):
        v = rec.get(key)
        if not isinstance(v, int) or isinstance(v, bool):
            return f"{key} must be a number of milliseconds since the epoch"
        if v < 10**11:  # before 1973 in ms: almost surely seconds
            return f"{key} looks like seconds; Clari wants milliseconds"
    if rec["updatedAt"] < rec["createdAt"]:
        return "updatedAt is before createdAt"
    return None


def render_item(rec: Record) -> str:
    try:
        return orjson.dumps(rec).decode()
    except TypeError:  # an integer past 64 bits
        return json.dumps(rec, separators=(",", ":"), ensure_ascii=False)


class FileCutter:
    """Where upload files end: each record costs its JSON and a comma, and a block around it
    (`{"sourceEntity":…,"records":[…]}`) when its entity differs from the record before it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 2  # "[]"
        self.last: str | None = None  # the entity of the open block
        self.ids: set[int] = set()  # hashes of (entity, id): a tenth of the memory of the pairs

    def cost(self, entity: str, item: str, where: str) -> int:
        size = len(item) if item.isascii() else len(item.encode())
        block = len(entity) + ENTITY_OVERHEAD
        if size + 1 + block + 2 > self.limit:
            raise SourceError(
                f"{where}: one record is larger than a file may be ({self.limit} bytes)"
            )
        return size + 1 + (0 if entity == self.last else block)

    def starts_new(self, entity: str, item: str, where: str) -> bool:
        """Add a record; True if it opens a new file (the one before it is complete)."""
        overhead = self.cost(entity, item, where)
        new = self.last is not None and self.size + overhead > self.limit
        if new:
            self.size, self.last, self.ids = 2, None, set()
            overhead = self.cost(entity, item, where)
        self.last = entity
        self.size += overhead
        return new


class FileWriter:
    """One upload file, rendered as records come (no list of them is kept): the API's JSON
    shape, a block per run of records of one entity."""

    def __init__(self, out: IO[bytes] | None = None) -> None:
        self.buf: IO[bytes] = io.BytesIO() if out is None else out
        self.buf.write(b"[")
        self.last: str | None = None
        self.records = 0

    def add(self, entity: str, item: str) -> None:
        w = self.buf.write
        if entity != self.last:
            if self.last is not None:
                w(b"]},")
            w(b'{"sourceEntity":' + json.dumps(entity).encode() + b',"records":[')
            self.last = entity
        else:
            w(b",")
        w(item.encode())
        self.records += 1

    def finish(self) -> None:
        self.buf.write(b"]}]" if self.last is not None else b"]")

    def close(self) -> bytes:
        """The finished file (written to memory)."""
        self.finish()
        buf = self.buf
        return buf.getvalue() if isinstance(buf, io.BytesIO) else b""


def split_files(records: list[tuple[str, Record, str]], limit: int) -> Iterator[bytes]:
    """The API's JSON shape in files of at most `limit` bytes."""
    cutter = FileCutter(limit)
    out = FileWriter()
    for entity, rec, where in records:
        item = render_item(rec)
        if cutter.starts_new(entity, item, where):
            yield out.close()
            out = FileWriter()
        out.add(entity, item)
    if out.records:
        yield out.close()


@dataclass
class IngestPlan:
    spans: list[Span] = field(default_factory=list)
    rows: int = 0


def validate_records(path: Path, limit: int, progress: Progress | None = None) -> IngestPlan:
    """One streaming pass: every record checked as Clari checks it, upload files planned.
    SourceError listing the first 100 problems (and how many more) if any."""
    problems = Problems(path)
    plan = IngestPlan()
    cutter = FileCutter(limit)
    first = count = 0
    start = first_line = last_line = end = 0
    every = PROGRESS_EVERY
    with open_source(path) as f:
        lines = Lines(f)
        for entity, rec, where, (line, lo, hi) in _records(path, f, lines, problems):
            if (why := check_record(rec)) is not None:
                _report(problems, line, where, why)
                continue
            item = render_item(rec)
            at = f"{path}:{line}" if line else f"{path}: {where}"
            if cutter.starts_new(entity, item, at) and count:
                plan.spans.append(
                    Span(
                        seq=len(plan.spans),
                        first_row=first,
                        row_count=count,
                        start=start,
                        end=end,
                        first_line=first_line,
                        last_line=last_line,
                    )
                )
                first, count = first + count, 0
            if not count:
                start, first_line = lo, line
            key = hash((entity, str(rec["id"])))  # a false "twice" has odds of ~1e-10 a file
            if key in cutter.ids:
                _report(problems, line, where, "same sourceEntity and id as an earlier record")
            cutter.ids.add(key)
            count += 1
            end, last_line = hi, line
            every -= 1
            if not every and progress is not None:
                every = PROGRESS_EVERY
                progress(first + count)
    if problems:
        raise problems.error("invalid records")
    if count:
        plan.spans.append(
            Span(
                seq=len(plan.spans),
                first_row=first,
                row_count=count,
                start=start,
                end=end,
                first_line=first_line,
                last_line=last_line,
            )
        )
    plan.rows = first + count
    if not plan.rows:
        raise SourceError(f"{path}: no records")
    return plan


def _report(problems: Problems, line: int, where: str, what: str) -> None:
    """At a line of JSON Lines, or at a record of a block of the array form."""
    if line:
        problems.add(line, what)
    else:
        problems.add(None, f"{where}: {what}")


def upload_files(
    path: Path, spans: list[Span], into: Path
) -> Generator[tuple[Span, Path, int], None, None]:
    """(span, upload file, records in it) for each of `spans` (in file order), each file
    written to the directory `into` (a 10 MB file is not held in memory while it is sent):
    JSON Lines by seeking to each span's bytes; the array form in one parse past everything
    before. The caller deletes each file once sent."""
    problems = Problems(path)
    with open_source(path) as f:
        if is_jsonl(path):
            for span in spans:
                lines = Lines(f, start=span.start, end=span.end, line=span.first_line - 1)
                yield _file_of(path, span, _records(path, f, lines, problems), into)
            return
        records = _records(path, f, Lines(f), problems)
        index = 0
        for span in spans:
            while index < span.first_row:
                next(records, None)
                index += 1
            yield _file_of(path, span, _take(records, span.row_count), into)
            index += span.row_count


def _take(it: Iterator[Any], n: int) -> Iterator[Any]:
    for _ in range(n):
        item = next(it, None)
        if item is None:
            return
        yield item


def _file_of(path: Path, span: Span, records: Iterator[Any], into: Path) -> tuple[Span, Path, int]:
    target = into / f"upload-{span.seq + 1:05d}.json"
    with target.open("wb") as f:
        out = FileWriter(f)
        for entity, rec, _, _ in records:
            if check_record(rec) is None:
                out.add(entity, render_item(rec))
        out.finish()
    n = out.records
    if n != span.row_count:
        raise SourceError(
            f"{path}: records {span.first_row + 1}-{span.first_row + span.row_count} no longer "
            f"read as they were validated ({n}); the file changed"
        )
    return span, target, n


Found = tuple[str, Record, str, tuple[int, int, int]]  # entity, record, where, (line, start, end)


def _records(path: Path, f: IO[bytes], lines: Lines, problems: Problems) -> Iterator[Found]:
    if is_jsonl(path):
        return _jsonl_records(path, lines, problems)
    return _array_records(path, f, problems)


def _jsonl_records(path: Path, lines: Lines, problems: Problems) -> Iterator[Found]:
    for n, start, rec in lines.objects(problems):
        if rec.__class__ is not dict or not rec.get("sourceEntity"):
            problems.add(n, "each line must be a record with its sourceEntity")
            continue
        entity = str(rec.pop("sourceEntity"))
        yield entity, rec, "", (n, start, lines.pos)


class _Events:
    """ijson's basic events with a one-event look-back, for a hand-written descent."""

    def __init__(self, f: IO[bytes]) -> None:
        self.it: Iterator[tuple[str, Any]] = iter(ijson.basic_parse(f, use_float=True))

    def next(self) -> tuple[str, Any]:
        return next(self.it)

    def skip_value(self, event: str) -> None:
        """Consume the rest of a value that began with `event`."""
        depth = 1 if event in ("start_map", "start_array") else 0
        while depth:
            ev, _ = self.next()
            if ev in ("start_map", "start_array"):
                depth += 1
            elif ev in ("end_map", "end_array"):
                depth -= 1

    def build(self, event: str, value: Any) -> Any:
        builder = ijson.ObjectBuilder()
        builder.event(event, value)
        depth = 1 if event in ("start_map", "start_array") else 0
        while depth:
            ev, val = self.next()
            builder.event(ev, val)
            if ev in ("start_map", "start_array"):
                depth += 1
            elif ev in ("end_map", "end_array"):
                depth -= 1
        return builder.value


def _array_records(path: Path, f: IO[bytes], problems: Problems) -> Iterator[Found]:
    events = _Events(f)
    try:
        event, _ = events.next()
        if event != "start_array":
            raise SourceError(f"{path}: must be an array of {{sourceEntity, records}} blocks")
        block = 0
        while True:
            event, _ = events.next()
            if event == "end_array":
                return
            block += 1
            if event != "start_map":
                events.skip_value(event)
                problems.add(None, f"block {block}: sourceEntity is missing")
                continue
            yield from _block(events, block, problems)
    except (ijson.JSONError, StopIteration) as exc:
        raise SourceError(f"{path}: not JSON ({exc or 'ends too soon'})") from None


def _block(events: _Events, block: int, problems: Problems) -> Iterator[Found]:
    entity: str | None = None
    seen_records = False
    while True:
        event, key = events.next()
        if event == "end_map":
            break
        event, value = events.next()
        if key == "sourceEntity" and event not in ("start_map", "start_array"):
            entity = str(value) if value else None
            continue
        if key != "records":
            events.skip_value(event)
            continue
        seen_records = True
        if event != "start_array" or not entity:
            events.skip_value(event)
            if not entity:
                problems.add(None, f"block {block}: sourceEntity is missing (or after records)")
            else:
                problems.add(None, f"block {block}: records is missing")
            continue
        r = 0
        while True:
            event, value = events.next()
            if event == "end_array":
                break
            r += 1
            where = f"block {block} record {r}"  # by place: the file's values are not quoted
            if event != "start_map":
                events.skip_value(event)
                problems.add(None, f"{where}: not an object")
                continue
            yield entity, events.build(event, value), where, (0, 0, 0)
    if not entity and not seen_records:
        problems.add(None, f"block {block}: sourceEntity is missing")
    elif not seen_records:
        problems.add(None, f"block {block}: records is missing")
