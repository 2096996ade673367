"""The whole-file readers the streaming ones replaced (orchestrator/providers/claravine.py before
issue 17), kept as the oracle the streaming validation is compared with."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

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
            extra = sorted(set(obj) - set(header))
            missing = sorted(set(header) - set(obj))
            raise SourceError(
                f"{path}:{n}: keys differ from line 1"
                + (f"; extra {extra}" if extra else "")
                + (f"; missing {missing}" if missing else "")
            )
        rows.append(["" if obj[k] is None else str(obj[k]) for k in header])
        lines.append(n)
    if header is None:
        raise SourceError(f"{path}: no records")
    return header, rows, lines
