"""Row counts are records: checked against Python's own CSV and JSON parsers, with the data
cut into chunks at arbitrary points (a quote, a CRLF or an escape split between two chunks)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.rowcount import (
    CsvCounter,
    JsonLinesCounter,
    JsonRecordsCounter,
    RowCounter,
    count_file,
    counter_for,
)

TEXT = st.text(alphabet=st.sampled_from(list('ab ,"\n\r\\é;')), max_size=8)


def fed(counter: RowCounter, data: bytes, cuts: list[int]) -> int | None:
    points = sorted({min(len(data), c) for c in cuts})
    start = 0
    for p in [*points, len(data)]:
        counter.feed(data[start:p])
        start = p
    return counter.result()


def csv_truth(text: str) -> int:
    rows = [r for r in csv.reader(io.StringIO(text, newline="")) if r]
    return max(0, len(rows) - 1)


def test_a_line_break_inside_quotes_is_not_a_record() -> None:
    data = b'id,note\n1,"two\nlines"\n2,"say ""hi""\r\nthere"\r\n3,plain\n'
    assert fed(CsvCounter(), data, []) == 3
    assert fed(CsvCounter(), data, list(range(len(data)))) == 3  # one byte at a time


def test_csv_edges() -> None:
    assert fed(CsvCounter(), b"", []) == 0
    assert fed(CsvCounter(), b"h1,h2\n", []) == 0
    assert fed(CsvCounter(), b"h1,h2\n1,2", []) == 1  # no final line break
    assert fed(CsvCounter(), b"h\n\n1\n\r\n2\n\n", []) == 2  # empty lines are not records
    assert fed(CsvCounter(), b'h\n""\n', []) == 1  # one empty quoted field is a record


@settings(max_examples=300)
@given(
    rows=st.lists(st.lists(TEXT, min_size=1, max_size=4), max_size=12),
    terminator=st.sampled_from(["\n", "\r\n"]),
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]),
    cuts=st.lists(st.integers(0, 400), max_size=6),
)
def test_csv_count_matches_the_csv_module(
    rows: list[list[str]], terminator: str, quoting: int, cuts: list[int]
) -> None:
    if quoting != csv.QUOTE_ALL and terminator == "\n":
        # The csv module then leaves a field's lone CR unquoted, and its reader ends a record
        # there: a file no CSV producer we read writes (RFC 4180 breaks lines with CRLF).
        rows = [[f.replace("\r", "") for f in row] for row in rows]
    buf = io.StringIO(newline="")
    csv.writer(buf, lineterminator=terminator, quoting=quoting).writerows([["h"], *rows])
    text = buf.getvalue()
    assert fed(CsvCounter(), text.encode(), cuts) == csv_truth(text)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(TEXT, kids, max_size=3),
    max_leaves=10,
)


@settings(max_examples=300)
@given(
    records=st.lists(JSON_VALUES, max_size=8),
    indent=st.sampled_from([None, 0, 2]),
    wrap=st.sampled_from([None, "items", "data", "records"]),
    ascii_only=st.booleans(),
    cuts=st.lists(st.integers(0, 600), max_size=6),
)
def test_json_count_matches_the_records(
    records: list[Any], indent: int | None, wrap: str | None, ascii_only: bool, cuts: list[int]
) -> None:
    doc: Any = records
    if wrap is not None:  # other keys, arrays among them, before and after the records
        doc = {"meta": {"rows": "x", "n": [1, 2]}, "tags": ["a,b", "]"], wrap: records, "z": [3]}
    data = json.dumps(doc, indent=indent, ensure_ascii=ascii_only).encode()
    assert fed(JsonRecordsCounter(), data, cuts) == len(records)


def test_json_that_holds_no_records_array_has_no_count() -> None:
    assert fed(JsonRecordsCounter(), b'{"a": 1}', []) is None
    assert fed(JsonRecordsCounter(), b"[1, 2", []) is None  # cut off
    assert fed(JsonRecordsCounter(), b" [ ] ", []) == 0
    assert fed(JsonRecordsCounter(), b'[{"s": "\\"],[,"}, 2]', [5, 6, 7]) == 2


@given(
    records=st.lists(JSON_VALUES, max_size=10),
    blanks=st.lists(st.sampled_from(["", "  ", "\t"]), max_size=4),
    final_newline=st.booleans(),
    cuts=st.lists(st.integers(0, 500), max_size=6),
)
def test_json_lines_count_non_blank_lines(
    records: list[Any], blanks: list[str], final_newline: bool, cuts: list[int]
) -> None:
    lines = [json.dumps(r) for r in records] + blanks
    data = "\n".join(lines) + ("\n" if final_newline else "")
    assert fed(JsonLinesCounter(), data.encode(), cuts) == len(records)


def test_count_file_reads_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_bytes(b'h\n"a\nb"\n' * 1 + b"x\n" * 10)
    assert count_file(path, "csv", chunk=3) == 11
    assert count_file(path, "xlsx") is None
    assert counter_for("pdf") is None
