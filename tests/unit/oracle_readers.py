"""The whole-file readers the streaming ones replaced (orchestrator/providers/claravine.py,
clayva.py and clari_ingest.py before issue 17), kept as the oracle the streaming validation is
compared with."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from orchestrator.imports.events import CSV_COLUMNS, check_event
from orchestrator.imports.records import check_record
from orchestrator.imports.streams import SourceError


def read_rows(path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SourceError(f"{path}:{line}: not UTF-8 (byte {raw[exc.start]:#04x})") from None
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return _read_jsonl(path, text)
    return _read_csv(path, text)


def _read_csv(path: Path, text: str) -> tuple[list[str], list[list[str]], list[int]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None or not any(h.strip() for h in header):
            raise SourceError(f"{path}:1: no header row")
        header = [h.strip() for h in header]
        dupes = sorted({h for h in header if header.count(h) > 1})
        if dupes or "" in header:
            what = f"repeated column {dupes[0]!r}" if dupes else "an empty column name"
            raise SourceError(f"{path}:1: header has {what}")
        rows, lines = [], []
        start = reader.line_num + 1
        for row in reader:
            if not row:  # blank line
                start = reader.line_num + 1
                continue
            if len(row) != len(header):
                raise SourceError(
                    f"{path}:{start}: {len(row)} values, the header has {len(header)}"
                )
            rows.append(row)
            lines.append(start)
            start = reader.line_num + 1
    except csv.Error as exc:
        raise SourceError(f"{path}:{reader.line_num}: {exc}") from None
    return header, rows, lines


def _read_jsonl(path: Path, text: str) -> tuple[list[str], list[list[str]], list[int]]:
    header: list[str] | None = None
    rows, lines = [], []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SourceError(f"{path}:{n}: not JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise SourceError(f"{path}:{n}: each line must be a JSON object")
        if header is None:
            header = list(obj)
        elif set(obj) != set(header):
            extra = len(set(obj) - set(header))  # counted, never quoted
            missing = len(set(header) - set(obj))
            raise SourceError(
                f"{path}:{n}: keys differ from line 1"
                + (f"; {extra} more" if extra else "")
                + (f"; {missing} missing" if missing else "")
            )
        rows.append(["" if obj[k] is None else str(obj[k]) for k in header])
        lines.append(n)
    if header is None:
        raise SourceError(f"{path}: no records")
    return header, rows, lines


MAX_ERRORS_SHOWN = 20


def parse_events(path: Path, text: str) -> tuple[list[dict[str, Any]], list[int], list[str]]:
    """(valid events, their line numbers, rejects as 'file:line: reason')."""
    raw: list[tuple[int, Any]] = []
    rejects: list[str] = []
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                raw.append((n, json.loads(line)))
            except json.JSONDecodeError as exc:
                rejects.append(f"{path}:{n}: not JSON ({exc.msg})")
    else:
        raw, rejects = _csv_events(path, text)
    events, lines = [], []
    for n, e in raw:
        if not isinstance(e, dict):
            rejects.append(f"{path}:{n}: an event must be a JSON object")
            continue
        if (why := check_event(e)) is not None:
            rejects.append(f"{path}:{n}: {why}")
            continue
        events.append({k: v for k, v in e.items() if v not in (None, "")})
        lines.append(n)
    if not raw and not rejects:
        raise SourceError(f"{path}: no events")
    return events, lines, rejects


def _csv_events(path: Path, text: str) -> tuple[list[tuple[int, Any]], list[str]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if not header:
            raise SourceError(f"{path}:1: no header row")
        header = [h.strip() for h in header]
        unknown = [h for h in header if h not in CSV_COLUMNS]
        if unknown or "event" not in header:
            what = f"unknown column {unknown[0]!r}" if unknown else "no 'event' column"
            raise SourceError(f"{path}:1: {what} (columns: {', '.join(CSV_COLUMNS)})")
        out: list[tuple[int, Any]] = []
        rejects: list[str] = []
        start = reader.line_num + 1
        for row in reader:
            n, start = start, reader.line_num + 1
            if not row:
                continue
            if len(row) != len(header):
                rejects.append(f"{path}:{n}: {len(row)} values, the header has {len(header)}")
                continue
            e: dict[str, Any] = {k: v for k, v in zip(header, row, strict=True) if v != ""}
            bad = False
            for key in ("properties", "context"):
                if e.get(key):
                    try:
                        e[key] = json.loads(e[key])
                    except json.JSONDecodeError:
                        rejects.append(f"{path}:{n}: {key} is not JSON")
                        bad = True
            if not bad:
                out.append((n, e))
    except csv.Error as exc:
        raise SourceError(f"{path}:{reader.line_num}: {exc}") from None
    return out, rejects


def parse_records(path: Path, text: str) -> list[tuple[str, dict[str, Any], str]]:
    """(sourceEntity, record, where) for every record, checked as Clari checks them."""
    out: list[tuple[str, dict[str, Any], str]] = []
    problems: list[str] = []
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{path}:{n}: not JSON ({exc.msg})")
                continue
            if not isinstance(rec, dict) or not rec.get("sourceEntity"):
                problems.append(f"{path}:{n}: each line must be a record with its sourceEntity")
                continue
            entity = str(rec.pop("sourceEntity"))
            out.append((entity, rec, f"{path}:{n}"))
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SourceError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from None
        if not isinstance(data, list):
            raise SourceError(f"{path}: must be an array of {{sourceEntity, records}} blocks")
        for b, block in enumerate(data):
            if not isinstance(block, dict) or not block.get("sourceEntity"):
                problems.append(f"{path}: block {b + 1}: sourceEntity is missing")
                continue
            records = block.get("records")
            if not isinstance(records, list):
                problems.append(f"{path}: block {b + 1}: records is missing")
                continue
            for r, rec in enumerate(records):
                where = f"{path}: block {b + 1} record {r + 1}"  # by place, never quoted
                if not isinstance(rec, dict):
                    problems.append(f"{where}: not an object")
                    continue
                out.append((str(block["sourceEntity"]), rec, where))
    seen: set[tuple[str, str]] = set()
    for entity, rec, where in out:
        if (why := check_record(rec)) is not None:
            problems.append(f"{where}: {why}")
        elif (entity, str(rec["id"])) in seen:
            problems.append(f"{where}: same sourceEntity and id as an earlier record")
        else:
            seen.add((entity, str(rec["id"])))
    if problems:
        shown = "\n".join(problems[:MAX_ERRORS_SHOWN])
        more = len(problems) - MAX_ERRORS_SHOWN
        raise SourceError(
            f"{len(problems)} invalid records, nothing sent:\n{shown}"
            + (f"\n… and {more} more" if more > 0 else "")
        )
    if not out:
        raise SourceError(f"{path}: no records")
    return out
