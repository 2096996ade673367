"""Clayva event sources: JSON Lines (one event per line) or CSV with `event`, `userId`,
`anonymousId`, `timestamp`, `properties` and `context` columns (the last two holding JSON
objects). An event Clayva would refuse is a reject: listed, and with `on_invalid = "skip"`
left out of the batches while the rest are sent."""

from __future__ import annotations

import csv
import itertools
import json
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from operator import attrgetter
from pathlib import Path
from typing import Annotated, Any

import msgspec
import orjson

from orchestrator.imports.streams import (
    SKIP,
    Block,
    JsonlPass,
    Lines,
    Problems,
    SourceError,
    Span,
    open_source,
    read_typed,
    sha256_hex,
)
from orchestrator.imports.tables import (
    PROGRESS_EVERY,
    Chunker,
    Progress,
    _CsvRows,
    is_jsonl,
)

CSV_COLUMNS = ("event", "userId", "anonymousId", "timestamp", "properties", "context")
Event = dict[str, Any]


def check_event(e: dict[str, Any]) -> str | None:
    """Why Clayva would refuse this event, or None."""
    name = e.get("event")
    if not isinstance(name, str) or not name.strip():
        return "event name is empty"
    if not e.get("userId") and not e.get("anonymousId"):
        return "userId or anonymousId is required"
    ts = e.get("timestamp")
    if ts is not None:
        text = ts if ts.__class__ is str else str(ts)
        try:
            datetime.fromisoformat(text)  # 3.11 reads a trailing Z as UTC
        except ValueError:
            return "timestamp is not ISO 8601 (like 2026-11-21T10:30:00Z)"
        if "T" not in text:
            return "timestamp has no time (like 2026-11-21T10:30:00Z)"
    for key in ("properties", "context"):
        if e.get(key) is not None and not isinstance(e[key], dict):
            return f"{key} must be a JSON object"
    return None


def batch_hash(events: list[Event]) -> str:
    """Identity of a batch's content (keys sorted, so key order does not matter)."""
    try:
        data = orjson.dumps(events, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # an integer past 64 bits
        data = json.dumps(events, sort_keys=True, separators=(",", ":")).encode()
    return sha256_hex(data)


@dataclass
class EventsPlan:
    spans: list[Span] = field(default_factory=list)
    rows: int = 0
    rejects: Problems | None = None


def validate_events(
    path: Path,
    per_batch: int,
    *,
    progress: Progress | None = None,
    reject: Callable[[str], None] | None = None,
) -> EventsPlan:
    """One streaming pass: every event checked, valid ones planned in batches of `per_batch`
    as byte ranges. Rejects go to `reject` (all of them) and are counted in the plan (the first
    100 listed). SourceError only for what makes the whole file unreadable."""
    problems = Problems(path, sink=reject)
    with open_source(path) as f:
        if is_jsonl(path):
            check = _EventsPass(problems, per_batch).run(f, progress)
            if not check.rows and not problems:
                raise SourceError(f"{path}: no events")
            return EventsPlan(spans=check.spans, rows=check.rows, rejects=problems)
        lines = Lines(f)
        events = _events(path, lines, problems, header_known=False)
        chunker = Chunker(lines, per_batch, None)  # hashed when read to be sent
        next(events)  # the header
        chunker.start, chunker.first_line = lines.pos, lines.line + 1
        every = PROGRESS_EVERY
        for _, event in events:
            chunker.row(event)
            every -= 1
            if not every and progress is not None:
                every = PROGRESS_EVERY
                progress(chunker.rows + len(chunker.buf))
        chunker.flush()
    if not chunker.rows and not problems:
        raise SourceError(f"{path}: no events")
    return EventsPlan(spans=chunker.spans, rows=chunker.rows, rejects=problems)


class _Shape(msgspec.Struct, gc=False):
    """Any JSON object, its members skipped: what `properties` and `context` must be."""


class _Checked(msgspec.Struct, gc=False):
    """What the typed pass reads of an event: the fields Clayva checks, typed as it checks
    them; nothing else is built (`properties` and `context` are only seen to be objects)."""

    event: Annotated[str, msgspec.Meta(min_length=1)]
    userId: Any = None
    anonymousId: Any = None
    timestamp: str | None = None
    properties: _Shape | None = None
    context: _Shape | None = None


_decode = msgspec.json.Decoder(_Checked).decode
_NAME, _STAMP = attrgetter("event"), attrgetter("timestamp")
_WHO = attrgetter("userId", "anonymousId")


class _EventsPass(JsonlPass):
    """Clayva's checks of a block of JSON Lines. The common block, every event valid, is read
    typed (msgspec, in C: the checked fields only) and checked by C maps over it, timestamps
    parsed in one C loop. Any other block is parsed whole: a valid event passes a few dict
    reads inline (check_event's verdict for it) and its timestamp is parsed with the block's
    others in one C loop; only an event that fails them is given to check_event, which says
    why (or, for what the inline test is too strict about, lets it through). Problems are
    reported once the block is checked, in line order."""

    parse_blocks = False  # `_typed` first

    def take(self, block: Block) -> None:
        if self._typed(block):
            self.plan(block, list(range(len(block.raws))))
            return
        block.values = block.parse(self.problems)
        self.plan(block, self.check(block))

    @staticmethod
    def _typed(block: Block) -> bool:
        """Whether every line of `block` is an event Clayva takes (False: look line by line)."""
        events = read_typed(block, _decode)
        if events is None:
            return False
        if any(map(str.isspace, map(_NAME, events))) or not all(map(any, map(_WHO, events))):
            return False
        stamps = [t for t in map(_STAMP, events) if t is not None]
        if not all(map(str.__contains__, stamps, itertools.repeat("T"))):
            return False
        try:
            deque(map(datetime.fromisoformat, stamps), maxlen=0)
        except ValueError:
            return False
        return True

    def check(self, block: Block) -> list[int]:
        values = block.values
        valid: list[int] = []
        stamps: list[str] = []  # the timestamps of `valid`'s events that have one
        bad: list[int] = []  # to be looked at one by one
        keep, stamp = valid.append, stamps.append
        for i, e in enumerate(values):
            if e.__class__ is dict:
                name, ts = e.get("event"), e.get("timestamp")
                p, c = e.get("properties"), e.get("context")
                if (
                    name.__class__ is str
                    and name
                    and not name.isspace()
                    and (e.get("userId") or e.get("anonymousId"))
                    and (p is None or p.__class__ is dict)
                    and (c is None or c.__class__ is dict)
                ):
                    if ts is None:
                        keep(i)
                        continue
                    if ts.__class__ is str and "T" in ts:
                        keep(i)
                        stamp(ts)
                        continue
            elif e is SKIP:
                continue
            bad.append(i)
        try:
            deque(map(datetime.fromisoformat, stamps), maxlen=0)
        except ValueError:  # one of them is not ISO 8601: which, below
            bad += [i for i in valid if values[i].get("timestamp") is not None]
            valid = [i for i in valid if values[i].get("timestamp") is None]
        if bad:
            valid = self._one_by_one(block, sorted(bad), valid)
        return valid

    def _one_by_one(self, block: Block, bad: list[int], valid: list[int]) -> list[int]:
        problems, first, values = self.problems, block.first, block.values
        for i in bad:
            e = values[i]
            if e.__class__ is not dict:
                problems.add(first + i, "an event must be a JSON object")
            elif (why := check_event(e)) is not None:
                problems.add(first + i, why)
            else:
                valid.append(i)
        valid.sort()
        return valid


def read_events(path: Path, span: Span, header: list[str] | None) -> tuple[list[Event], list[int]]:
    """The valid events of one planned batch and their lines, read from its byte range."""
    problems = Problems(path, limit=0)
    with open_source(path) as f:
        lines = Lines(f, start=span.start, end=span.end, line=span.first_line - 1)
        got = list(_events(path, lines, problems, header_known=True, header=header))
    if len(got) != span.row_count:
        raise SourceError(
            f"{path}: lines {span.first_line}-{span.last_line} no longer read as they were "
            f"validated ({len(got)} events, planned {span.row_count}); the file changed"
        )
    return [e for _, e in got], [n for n, _ in got]


def read_header(path: Path) -> list[str] | None:
    """A CSV source's columns (None for JSON Lines)."""
    if is_jsonl(path):
        return None
    with open_source(path) as f:
        events = _events(path, Lines(f), Problems(path), header_known=False)
        return next(events)[1]["columns"]  # type: ignore[no-any-return]


def _events(
    path: Path,
    lines: Lines,
    problems: Problems,
    *,
    header_known: bool,
    header: list[str] | None = None,
) -> Iterator[tuple[int, Event]]:
    """(line, event) of every valid event; a CSV's first item is its header (when not known)."""
    if is_jsonl(path):
        for n, _, e in lines.objects(problems):  # the hot loop: inline, no generator between
            if e.__class__ is not dict:
                problems.add(n, "an event must be a JSON object")
            elif (why := check_event(e)) is not None:
                problems.add(n, why)
            else:
                values = e.values()
                yield (
                    n,
                    (
                        {k: v for k, v in e.items() if v is not None and v != ""}
                        if None in values or "" in values
                        else e
                    ),
                )
        return
    else:
        if not header_known:
            header = _csv_header(path, lines)
            yield 1, {"columns": header}
        assert header is not None
        raw_events = _csv_events(lines, problems, header)
    for n, e in raw_events:
        if not isinstance(e, dict):
            problems.add(n, "an event must be a JSON object")
            continue
        if (why := check_event(e)) is not None:
            problems.add(n, why)
            continue
        yield n, {k: v for k, v in e.items() if v is not None and v != ""}


def _csv_header(path: Path, lines: Lines) -> list[str]:
    problems = Problems(path)
    reader = csv.reader(lines.text(problems), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise SourceError(f"{path}:{lines.line}: {exc}") from None
    if problems:
        raise SourceError(problems.shown[0])
    if not header:
        raise SourceError(f"{path}:1: no header row")
    header = [h.strip() for h in header]
    # Named by position, never quoted: a file never meant as data (a key file) has a first line
    # that must not reach the error, the ledger or the status page.
    unknown = [i for i, h in enumerate(header, start=1) if h not in CSV_COLUMNS]
    if unknown or "event" not in header:
        what = f"column {unknown[0]} is not a known one" if unknown else "no 'event' column"
        raise SourceError(f"{path}:1: {what} (columns: {', '.join(CSV_COLUMNS)})")
    return header


def _csv_events(lines: Lines, problems: Problems, header: list[str]) -> Iterator[tuple[int, Any]]:
    rows = _CsvRows(lines, problems, len(header))
    for row in rows:
        n = rows.first
        e: dict[str, Any] = {k: v for k, v in zip(header, row, strict=True) if v != ""}
        bad = False
        for key in ("properties", "context"):
            if e.get(key):
                try:
                    e[key] = json.loads(e[key])
                except json.JSONDecodeError:
                    problems.add(n, f"{key} is not JSON")
                    bad = True
        if not bad:
            yield n, e
