"""Pure pieces of the multi-part kinds: planning parts and chunks, stitching, reading sources."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from orchestrator.domain import Job, JobState, PartState
from orchestrator.imports.streams import SourceError
from orchestrator.imports.tables import read_span, validate_table
from orchestrator.outputs import stitch
from orchestrator.providers.claravine import (
    SubmissionParams,
    TransactionsExportParams,
    chunk_hash,
    describe_failure,
    plan_chunks,
)
from orchestrator.providers.claro import DatasetExportParams, plan_parts, rows_to_export


def read_rows(path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """Every row of a source as the streaming reader gives them, chunk by chunk."""
    plan = validate_table(path, 1000)
    rows: list[list[str]] = []
    lines: list[int] = []
    for span in plan.spans:
        got, nums = read_span(path, plan.fields, span)
        rows += got
        lines += nums
    return plan.fields, rows, lines


@settings(deadline=None)
@given(
    case=st.integers(1, 100_000).flatmap(
        lambda per: st.tuples(st.integers(0, per * 60), st.just(per))
    )
)
def test_parts_cover_every_row_once_within_the_api_limit(case: tuple[int, int]) -> None:
    total, per = case
    parts = plan_parts(1, total, per)
    assert [p.seq for p in parts] == list(range(len(parts)))
    assert all(1 <= (p.row_count or 0) <= per for p in parts)
    if total == 0:
        assert len(parts) == 1  # the header still comes from one export
        return
    end = 0
    for p in parts:  # contiguous, no overlap, no gap
        assert p.first_row == end
        end += p.row_count or 0
    assert end == total


def test_250k_rows_are_three_parts() -> None:
    assert [(p.first_row, p.row_count) for p in plan_parts(1, 250_000, 100_000)] == [
        (0, 100_000),
        (100_000, 100_000),
        (200_000, 50_000),
    ]


def test_export_params_are_checked_before_sending() -> None:
    with pytest.raises(ValidationError, match="less than or equal to 86400"):
        DatasetExportParams.model_validate({"datasetId": "d", "expiresIn": 90_000})
    with pytest.raises(ValidationError, match="csv"):
        DatasetExportParams.model_validate({"datasetId": "d", "format": "parquet"})
    with pytest.raises(ValidationError, match="exactly one of datasetId, datasets"):
        DatasetExportParams.model_validate({"datasetId": "d", "datasets": ["e"]})
    with pytest.raises(ValidationError, match="less than or equal to 100000"):
        DatasetExportParams.model_validate({"datasetId": "d", "partRows": 100_001})
    assert rows_to_export(1000, 150, 420) == 420
    assert rows_to_export(1000, 900, 420) == 100
    assert rows_to_export(1000, 1200, None) == 0
    assert rows_to_export(1000, 0, None) == 1000


def _csv(rows: list[list[str]]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode()


@settings(max_examples=40, deadline=None)
@given(
    chunks=st.lists(
        st.lists(st.lists(st.text(min_size=0, max_size=5), min_size=2, max_size=2), max_size=4),
        min_size=1,
        max_size=4,
    )
)
def test_csv_stitch_keeps_one_header_and_every_row_in_order(
    tmp_path_factory: pytest.TempPathFactory, chunks: list[list[list[str]]]
) -> None:
    d = tmp_path_factory.mktemp("s")
    clean = [[[v.replace("\r", "").replace("\n", "") for v in r] for r in c] for c in chunks]
    paths = []
    for i, rows in enumerate(clean):
        p = d / f"p{i}.csv"
        p.write_bytes(_csv([["a", "b"], *rows]))
        paths.append(p)
    size, _sha, count = stitch(paths, d / "out.csv", "csv")
    got = list(csv.reader(io.StringIO((d / "out.csv").read_text(), newline="")))
    want = [r for c in clean for r in c]
    assert got[0] == ["a", "b"] and got[1:] == want
    assert count == len(want)
    assert size == (d / "out.csv").stat().st_size
    assert not list(d.glob(".*.part"))


def test_json_stitch_merges_arrays_and_skips_empty_ones(tmp_path: Path) -> None:
    bodies = [b' [{"a": 1}, {"a": 2}]\n', b"[]", b'[\n{"a": 3}\n]']
    paths = []
    for i, body in enumerate(bodies):
        p = tmp_path / f"p{i}.json"
        p.write_bytes(body)
        paths.append(p)
    _, _, rows = stitch(paths, tmp_path / "out.json", "json")
    assert json.loads((tmp_path / "out.json").read_text()) == [{"a": 1}, {"a": 2}, {"a": 3}]
    assert rows == 3
    (tmp_path / "bad.json").write_bytes(b'{"a": 1}')
    with pytest.raises(ValueError, match="not a JSON array"):
        stitch([tmp_path / "bad.json"], tmp_path / "out2.json", "json")


def job(**params: object) -> Job:
    return Job(
        id=7,
        pipeline="tax",
        kind="claravine.submission",
        provider="claravine",
        state=JobState.RUNNING,
        params={"sha256": "ab" * 32, **params},
    )


@settings(deadline=None, max_examples=40)
@given(n=st.integers(0, 5_000), per=st.integers(1, 1000))
def test_chunks_cover_rows_at_most_per_post_with_unique_names(n: int, per: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.csv"
        src.write_text("x\n" + "".join(f"{i}\n" for i in range(n)))
        chunks = plan_chunks(job(), validate_table(src, per).spans)
    assert sum(c.row_count or 0 for c in chunks) == n
    assert [c.first_row for c in chunks] == list(range(0, n, per))
    assert all(c.byte_start is not None and c.byte_end is not None for c in chunks)
    assert all(0 < (c.row_count or 0) <= per for c in chunks)
    assert len({c.name for c in chunks}) == len(chunks)
    assert all(c.state == PartState.PENDING for c in chunks)


def test_chunk_identity_is_its_content() -> None:
    assert chunk_hash(["a"], [["1"]]) == chunk_hash(["a"], [["1"]])
    assert chunk_hash(["a"], [["1"]]) != chunk_hash(["a"], [["2"]])
    assert chunk_hash(["a"], [["1"]]) != chunk_hash(["b"], [["1"]])


def test_failure_is_described_with_file_lines(tmp_path: Path) -> None:
    src = tmp_path / "f.csv"
    src.write_text("h\n" + "".join(f"{i}\n" for i in range(3000)))
    part = plan_chunks(job(), validate_table(src, 1000).spans)[1]
    assert describe_failure(str(src), part, "bad") == (
        f"{src}: lines 1002-2001 (rows 1001-2000): bad"
    )


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        (b"", ".csv", ":1: no header row"),
        (b"a,b\n1\n", ".csv", ":2: 1 values, the header has 2"),
        (b"a,\n1,2\n", ".csv", ":1: header has an empty column name"),
        (b'a\n"unclosed\n', ".csv", ":2: unexpected end of data"),
        (b"a\n\xff\n", ".csv", ":2: not UTF-8"),
        (b"[1]\n", ".jsonl", ":1: each line must be a JSON object"),
        (b"\n\n", ".jsonl", ": no records"),
    ],
)
def test_bad_sources_name_file_and_line(
    tmp_path: Path, content: bytes, suffix: str, message: str
) -> None:
    src = tmp_path / f"in{suffix}"
    src.write_bytes(content)
    with pytest.raises(SourceError) as err:
        read_rows(src)
    assert f"{src}{message}" in str(err.value).splitlines()[-1]


def test_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot read"):
        read_rows(tmp_path / "missing.csv")


def test_blank_lines_keep_line_numbers_true(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_bytes(b"a,b\n1,2\n\n3,4\n")
    fields, rows, lines = read_rows(src)
    assert fields == ["a", "b"] and rows == [["1", "2"], ["3", "4"]] and lines == [2, 4]


def test_claravine_params() -> None:
    with pytest.raises(ValidationError, match="source is empty"):
        SubmissionParams.model_validate({"dataset": "d", "source": " "})
    SubmissionParams.model_validate({"dataset": "d", "source": {"pipeline": "other"}})
    with pytest.raises(ValidationError, match="end-date is before start-date"):
        TransactionsExportParams.model_validate(
            {"dataset": "d", "start-date": "2026-11-02", "end-date": "2026-11-01"}
        )
