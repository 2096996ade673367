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
import itertools
import json
from array import array
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from operator import attrgetter, lt
from pathlib import Path
from typing import IO, Annotated, Any

import ijson
import msgspec
import orjson

from orchestrator.imports.streams import (
    _DIGITS,
    _LONG_RUN,
    SKIP,
    Block,
    JsonlPass,
    Lines,
    Problems,
    SourceError,
    Span,
    open_source,
    read_typed,
)
from orchestrator.imports.tables import PROGRESS_EVERY, Progress, is_jsonl

Record = dict[str, Any]
ENTITY_OVERHEAD = 40  # bytes of `{"sourceEntity":…,"records":[…]}` around an entity's name
MIN_MS = 10**11  # a time before 1973 in ms: almost surely seconds
TWICE = "same sourceEntity and id as an earlier record"
# Bytes a JSON line spends on its `"sourceEntity":` member beyond the value (the key, a colon,
# a comma: a valid record has other members), none of which its upload rendering keeps.
MEMBER = 16
# A line's shape for `may_grow` and `decimals`: where a value may begin (":", "," and "[") as
# ":", a point as ".", an exponent's "e" or "E" and NaN's "N" as "e", quotes kept and "t" and
# "f" (true, false: their "e" is no exponent) as "x"; digits, signs, spaces and every other
# character dropped, to leave little to search. Newlines are kept: a block is shaped at once.
_SHAPE = bytes(
    58 if c in b":,[" else 101 if c in b"eEN" else 120 if c in b"tf" else c for c in range(256)
)
_DROP = bytes(c for c in range(256) if c not in b':,[.eENtf"\n')
# The most a decimal written without an exponent renders longer: none below 1e16; from there
# orjson writes `1.2345678901234568e+16` for `12345678901234567.0` (22 bytes for 19).
DECIMAL_SLACK = 3


def shape(raw: bytes) -> bytes:
    return raw.translate(_SHAPE, _DROP)


def may_grow(shaped: bytes) -> bool:
    """Whether a line (its `shape`) may hold a number that renders longer than written by
    more than `decimals` allows: a float written with an exponent (`1e5` renders `100000.0`)
    or NaN (`null`, read by the json module) — a value that begins at ":", "," or "[" with an
    "e", "E" or "N" past its digits and point. Text in a string may answer yes too, which only
    costs that line a rendering; never no where such a value is."""
    return b":e" in shaped or b":.e" in shaped


def decimals(shaped: bytes) -> int:
    """How many values of a line (its `shape`) may be decimals (text in a string may count
    too): each may render up to DECIMAL_SLACK bytes longer than written."""
    return shaped.count(b":.")


def check_record(rec: dict[str, Any]) -> str | None:
    if not rec.get("id"):
        return "id is missing"
    for key in ("createdAt", "updatedAt"):
        v = rec.get(key)
        if not isinstance(v, int) or isinstance(v, bool):
            return f"{key} must be a number of milliseconds since the epoch"
        if v < MIN_MS:
            return f"{key} looks like seconds; Clari wants milliseconds"
    if rec["updatedAt"] < rec["createdAt"]:
        return "updatedAt is before createdAt"
    return None


def render_item(rec: Any) -> bytes:
    try:
        return orjson.dumps(rec)
    except TypeError:  # an integer past 64 bits
        return json.dumps(rec, separators=(",", ":"), ensure_ascii=False).encode()


class FileWriter:
    """One upload file, rendered as records come (no list of them is kept): the API's JSON
    shape, a block per run of records of one entity."""

    def __init__(self, out: IO[bytes] | None = None) -> None:
        self.buf: IO[bytes] = io.BytesIO() if out is None else out
        self.buf.write(b"[")
        self.last: str | None = None
        self.records = 0

    def add(self, entity: str, item: bytes) -> None:
        w = self.buf.write
        if entity != self.last:
            if self.last is not None:
                w(b"]},")
            w(b'{"sourceEntity":' + json.dumps(entity).encode() + b',"records":[')
            self.last = entity
        else:
            w(b",")
        w(item)
        self.records += 1

    def finish(self) -> None:
        self.buf.write(b"]}]" if self.last is not None else b"]")

    def close(self) -> bytes:
        """The finished file (written to memory)."""
        self.finish()
        buf = self.buf
        return buf.getvalue() if isinstance(buf, io.BytesIO) else b""


def split_files(records: list[tuple[str, Record, str]], limit: int) -> Iterator[bytes]:
    """The API's JSON shape in files of at most `limit` bytes, cut as a validation pass cuts
    them (records already checked)."""
    where = Path("records")
    plan = _FilePlan(where, limit, Problems(where))
    for entity, rec, place in records:
        plan.where = place
        plan.add(entity, rec["id"], len(render_item(rec)), None, 0)
    it = iter(records)
    for span in plan.close():
        out = FileWriter()
        for entity, rec, _ in itertools.islice(it, span.row_count):
            out.add(entity, render_item(rec))
        yield out.close()


@dataclass
class IngestPlan:
    spans: list[Span] = field(default_factory=list)
    rows: int = 0


def validate_records(path: Path, limit: int, progress: Progress | None = None) -> IngestPlan:
    """One streaming pass: every record checked as Clari checks it, upload files planned.
    SourceError listing the first 100 problems (and how many more) if any."""
    problems = Problems(path)
    files = _FilePlan(path, limit, problems)
    with open_source(path) as f:
        if is_jsonl(path):
            files.run(f, progress)
        else:
            files.add_records(_array_records(path, f, problems), progress)
    if problems:
        raise problems.error("invalid records")
    plan = IngestPlan(spans=files.close(), rows=files.rows)
    if not plan.rows:
        raise SourceError(f"{path}: no records")
    return plan


class _FilePlan(JsonlPass):
    """The upload files of a validation pass as spans of the source, fed every record in file
    order: each checked (`check_record`), costed as it will be rendered, and refused when its
    id is already in its file. JSON Lines go through the shared block pass (`take`: a parsed
    block at a time, the common record — valid, new id, same entity, room in the file — with
    no call of its own); the array form is fed record by record (`add_records`)."""

    parse_blocks = False  # `_take_typed` first

    def __init__(self, path: Path, limit: int, problems: Problems) -> None:
        super().__init__(problems)
        self.path, self.limit = path, limit
        self.spans: list[Span] = []
        self.rows = 0  # records planned in closed files
        self.count = 0  # records in the open file
        self.size = 2  # bytes of the open file: "[]" and its blocks
        self.entity: str | None = None  # of the open file's last block
        self.entity_cost = 0  # bytes of a block around a record of `entity`
        self.ids: set[int] = set()  # hashes of (entity, id) in the open file
        self.start = self.first_line = 0  # where the open file begins (bytes, line)
        self.last: tuple[Block | None, int] = (None, 0)  # its last record

    @property
    def validated(self) -> int:
        return self.rows + self.count

    def take(self, block: Block) -> None:
        """Every record of a block of JSON Lines: the common block the typed way, any other
        (a problem, a float, a blank line) parsed whole and checked as ever."""
        if not self._take_typed(block):
            self._take_parsed(block)

    def _take_typed(self, block: Block) -> bool:
        """A block whose every line is a valid record: each line read into just the four
        fields checked (msgspec, in C: nothing else of a record is built) and costed as
        `line_size` costs it — by its length, or where a float may grow by its rendering
        (orjson: parsed and rendered, those lines only) — then added at once when they fit the
        open file, are of its entity and repeat no id; else one by one. False, nothing taken,
        for any other block."""
        raws, whole = block.raws, block.whole
        recs = read_typed(block, _decode)
        if recs is None:
            return False
        if not all(map(_ID, recs)) or any(map(lt, map(_UPDATED, recs), map(_CREATED, recs))):
            return False
        # Each line as costed, with its sourceEntity member: its length and each decimal's
        # slack, or where a float may grow more, its rendering.
        shaped = shape(whole)
        if may_grow(shaped):
            if _LONG_RUN in whole.translate(_DIGITS):  # orjson would read a float: not exact
                return False
            try:
                lengths = list(map(_cost, raws, shaped.split(b"\n")))
            except (ValueError, TypeError):  # 1e400 (the json module's), nesting past orjson's
                return False
        else:
            lengths = None
        entities = set(map(_ENTITY, recs))
        if len(entities) == 1 and self.entity in entities:
            entity = entities.pop()
            keys = map(entity_key(entity).__xor__, map(hash, map(str, map(_ID, recs))))
            member = MEMBER + len(orjson.dumps(entity)) - 1  # less the comma each record adds
            n = len(recs)
            if lengths is None:
                total = sum(map(len, raws)) + DECIMAL_SLACK * decimals(shaped)
            else:
                total = sum(lengths)
            if self._bulk(block, n, total - n * member, set(keys), n - 1):
                return True
        if lengths is None:
            lengths = list(map(_cost, raws, shaped.split(b"\n")))
        dumps = orjson.dumps
        for i, rec in enumerate(recs):
            entity = rec.sourceEntity
            self.add(entity, rec.id, lengths[i] - MEMBER - len(dumps(entity)), block, i)
        return True

    def _take_parsed(self, block: Block) -> None:
        """Every line of a block parsed (`Block.parse`: problems reported), checked in one
        loop, costed (`line_size`) and added in bulk when they can be, as above."""
        problems, first, raws = self.problems, block.first, block.raws
        block.values = block.parse(problems)
        recs: list[Record] = []
        rids: list[Any] = []
        at: list[int] = []
        ents: list[Any] = []
        keep_rec, keep_rid, keep_at, keep_ent = recs.append, rids.append, at.append, ents.append
        for i, rec in enumerate(block.values):
            if rec.__class__ is not dict:
                if rec is not SKIP:
                    problems.add(first + i, "each line must be a record with its sourceEntity")
                continue
            entity = rec.pop("sourceEntity", None)
            if not entity:
                problems.add(first + i, "each line must be a record with its sourceEntity")
                continue
            c, u, rid = rec.get("createdAt"), rec.get("updatedAt"), rec.get("id")
            if not (rid and c.__class__ is int and u.__class__ is int and c >= MIN_MS and u >= c):
                problems.add(first + i, check_record(rec) or "not a record")
                continue
            keep_rec(rec)
            keep_rid(rid)
            keep_at(i)
            keep_ent(entity)
        if not at:
            return
        sizes = [line_size(raws[i], e, rec) for i, e, rec in zip(at, ents, recs, strict=True)]
        entity = self.entity
        if entity is not None and ents.count(entity) == len(ents):
            keys = set(map(id_key, itertools.repeat(entity), rids))
            if self._bulk(block, len(at), sum(sizes) + len(at), keys, at[-1]):
                return
        for rid, i, entity, size in zip(rids, at, ents, sizes, strict=True):
            self.add(entity if entity.__class__ is str else str(entity), rid, size, block, i)

    def _bulk(self, block: Block, records: int, cost: int, keys: set[int], last: int) -> bool:
        """Add `records` records of the open file's entity at once — `cost` bytes with their
        commas, `keys` their ids (`id_key`), the last at line `last` of `block` — if they fit
        in it and repeat no id (of the file or of each other); False (nothing added) if not."""
        if len(keys) < records or self.size + cost > self.limit or not self.ids.isdisjoint(keys):
            return False
        self.ids |= keys
        self.size += cost
        self.count += records
        self.last = (block, last)
        return True

    def add_records(self, records: Iterator[Found], progress: Progress | None) -> None:
        """Records of the JSON array form, located by block and place (no line to name)."""
        every = PROGRESS_EVERY
        for entity, rec, where, _ in records:
            if (why := check_record(rec)) is not None:
                self.problems.add(None, f"{where}: {why}")
                continue
            self.where = where
            self.add(entity, rec["id"], len(render_item(rec)), None, 0)
            every -= 1
            if not every and progress is not None:
                every = PROGRESS_EVERY
                progress(self.rows + self.count)

    where = ""  # the array form's place of the record being added (in messages)

    def add(self, entity: str, rid: Any, size: int, block: Block | None, i: int) -> None:
        """A record that passed its checks, `size` bytes rendered, at line `i` of `block`."""
        if entity != self.entity:
            cost = size + 1 + len(json.dumps(entity)) + ENTITY_OVERHEAD
        else:
            cost = size + 1
        if self.count and self.size + cost > self.limit:
            self._cut()
            cost = size + 1 + len(json.dumps(entity)) + ENTITY_OVERHEAD
        if cost + 2 > self.limit:
            where = f"{self.path}:{block.first + i}" if block else f"{self.path}: {self.where}"
            raise SourceError(
                f"{where}: one record is larger than a file may be ({self.limit} bytes)"
            )
        if entity != self.entity:
            self.entity = entity
        self.size += cost
        key = id_key(entity, rid)  # a false "twice" has odds of ~1e-10 a file
        ids = self.ids
        if key in ids:
            if block is not None:
                self.problems.add(block.first + i, TWICE)
            else:
                self.problems.add(None, f"{self.where}: {TWICE}")
        ids.add(key)
        if not self.count and block is not None:  # no block is held: its records with it
            self.start, self.first_line = block.offset(i), block.first + i
        self.last = (block, i)
        self.count += 1

    def _cut(self) -> None:
        """Close the open file as a span: lines and bytes of its first and last record (the
        array form: records only)."""
        block, i = self.last
        self.spans.append(
            Span(
                seq=len(self.spans),
                first_row=self.rows,
                row_count=self.count,
                start=self.start,
                end=block.offset(i + 1) if block else 0,
                first_line=self.first_line,
                last_line=block.first + i if block else 0,
            )
        )
        self.rows += self.count
        self.count, self.size, self.entity, self.ids = 0, 2, None, set()
        self.last = (None, 0)

    def close(self) -> list[Span]:
        if self.count:
            self._cut()
        return self.spans


def id_key(entity: str, rid: Any) -> int:
    """A record's identity at Clari, as a hash: its entity and id (an id as Clari keys it). A
    block of one entity computes it in C: `entity_key(entity) ^ hash(str(rid))` mapped."""
    return entity_key(entity) ^ hash(rid if rid.__class__ is str else str(rid))


def entity_key(entity: str) -> int:
    return hash(("sourceEntity", entity))


def _written(raw: bytes, shaped: bytes) -> int:
    """A line's length and each decimal's slack: the most its values render to, where none
    may grow more (`may_grow`)."""
    return len(raw) + DECIMAL_SLACK * decimals(shaped)


def line_size(raw: bytes, entity: Any, rec: Record) -> int:
    """The bytes a JSON line's record is planned at in its upload file: never less than its
    rendering there (`render_item`, sourceEntity taken out), so a file planned within the
    limit is within it when sent. The line's own length less its sourceEntity member, as
    rendering only removes what a line may add (spaces, escapes, a repeated key), plus each
    decimal's slack — unless the line holds a float that may render longer still
    (`may_grow`): then the rendering itself."""
    shaped = shape(raw)
    if may_grow(shaped):
        return len(render_item(rec))
    return _written(raw, shaped) - MEMBER - len(render_item(entity))


def _cost(raw: bytes, shaped: bytes) -> int:
    """`line_size` of a line whose record passed the typed checks, its sourceEntity member
    still counted (the caller takes it off): the rendering is orjson's (no integer past 64
    bits: the caller has seen to that)."""
    if may_grow(shaped):
        return len(orjson.dumps(orjson.loads(raw)))
    return _written(raw, shaped)


class _Checked(msgspec.Struct, gc=False):
    """What the typed pass reads of a JSON line: the four fields Clari checks, typed as it
    checks them (no bool for a number, no float for an integer); nothing else is built."""

    sourceEntity: Annotated[str, msgspec.Meta(min_length=1)]
    id: Any
    createdAt: Annotated[int, msgspec.Meta(ge=MIN_MS)]
    updatedAt: Annotated[int, msgspec.Meta(ge=MIN_MS)]


_decode = msgspec.json.Decoder(_Checked).decode
_ENTITY, _ID = attrgetter("sourceEntity"), attrgetter("id")
_CREATED, _UPDATED = attrgetter("createdAt"), attrgetter("updatedAt")


class IdFilter:
    """The identities of one upload file's records in 1 MiB of bits (a Bloom filter, two bits
    a record): whether a later file may hold one of them. A false "may" (under 1% at 200,000
    records) only makes the later file wait for this one."""

    BITS = 1 << 23

    def __init__(self, keys: array[int]) -> None:
        self.bits = bits = bytearray(self.BITS >> 3)
        mask = self.BITS - 1
        for h in keys:
            for b in (h & mask, (h >> 23) & mask):
                bits[b >> 3] |= 1 << (b & 7)

    def may_hold_any(self, keys: array[int]) -> bool:
        bits, mask = self.bits, self.BITS - 1
        for h in keys:
            b, c = h & mask, (h >> 23) & mask
            if bits[b >> 3] >> (b & 7) & 1 and bits[c >> 3] >> (c & 7) & 1:
                return True
        return False


@dataclass
class UploadFile:
    span: Span
    path: Path  # in the scratch directory: the caller deletes it once sent
    records: int
    keys: array[int]  # id_key of each record


def upload_files(path: Path, spans: list[Span], into: Path) -> Generator[UploadFile, None, None]:
    """Each of `spans` (in file order) as an upload file written to the directory `into` (a
    10 MB file is not held in memory while it is sent): JSON Lines by seeking to each span's
    bytes; the array form in one parse past everything before."""
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


def _file_of(path: Path, span: Span, records: Iterator[Any], into: Path) -> UploadFile:
    target = into / f"upload-{span.seq + 1:05d}.json"
    keys = array("q")
    with target.open("wb") as f:
        out = FileWriter(f)
        for entity, rec, _, _ in records:
            if check_record(rec) is None:
                out.add(entity, render_item(rec))
                keys.append(id_key(entity, rec["id"]))
        out.finish()
    n = out.records
    if n != span.row_count:
        raise SourceError(
            f"{path}: records {span.first_row + 1}-{span.first_row + span.row_count} no longer "
            f"read as they were validated ({n}); the file changed"
        )
    return UploadFile(span=span, path=target, records=n, keys=keys)


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
        raise SourceError(f"{path}: not JSON ({_reason(exc) or 'ends too soon'})") from None
    except UnicodeDecodeError as exc:  # a string's bytes (ijson's C backend decodes them)
        raise SourceError(f"{path}: not UTF-8 (byte {exc.object[exc.start]:#04x})") from None


def _reason(exc: Exception) -> str:
    """yajl's message, which it gives as bytes with the text around the fault."""
    why = exc.args[0] if exc.args else ""
    if isinstance(why, bytes):
        why = why.decode("utf-8", "replace")
    return " ".join(str(why).split())


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
