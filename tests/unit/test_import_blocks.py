"""The JSON Lines validation pass a block at a time (streams.JsonlPass: blocks parsed in C, each
kind's checks one loop per block, Clari's records added in bulk) reports exactly what a line at
a time reports: the same problems, in file order, and the same plan. The oracle reads each line
on its own with the json module and the kinds' own per-record checks; blocks are made tiny so
lines straddle reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from orchestrator.imports import streams
from orchestrator.imports.events import check_event, validate_events
from orchestrator.imports.records import (
    _FilePlan,
    check_record,
    line_size,
    may_grow,
    render_item,
    shape,
    upload_files,
    validate_records,
)
from orchestrator.imports.streams import Problems, SourceError, Span, not_utf8
from orchestrator.imports.tables import validate_table

SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
# Lines no kind accepts: blank, not JSON, not UTF-8, not an object, an integer past 64 bits.
BAD = [
    b"",
    b"   ",
    b"junk",
    b'{"a": 1',
    b"[1, 2]",
    b'"text"',
    b"123456789012345678901234",
    b'{"event": "\xff"}',
]
BLOCKS = st.sampled_from([1, 7, 64, 1 << 15])


def _write(path: Path, lines: list[bytes], newline_at_end: bool) -> None:
    path.write_bytes(b"\n".join(lines) + (b"\n" if newline_at_end and lines else b""))


def _parsed(path: Path, lines: list[bytes], problems: list[str]) -> list[tuple[int, int, Any]]:
    """(line, byte offset just past the line, value) of every line that parses, one at a time;
    the rest are problems as `file:line: what`."""
    out = []
    end = 0
    for n, raw in enumerate(lines, start=1):
        end += len(raw) + 1
        if not raw.strip():
            continue
        if (bad := not_utf8(raw)) is not None:
            problems.append(f"{path}:{n}: {bad}")
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            problems.append(f"{path}:{n}: not JSON ({exc.msg})")
            continue
        out.append((n, end, value))
    return out


def _line_of(path: Path, problem: str) -> int:
    return int(problem.removeprefix(f"{path}:").split(":", 1)[0])


def _spans(valid: list[tuple[int, int]], per: int) -> list[tuple[int, int, int, int, int]]:
    """Spans of `per` valid lines (line, end offset): (rows, start, end, first_line, last_line),
    each beginning where the one before ended."""
    spans = []
    start, first = 0, 1
    for at in range(0, len(valid), per):
        chunk = valid[at : at + per]
        last, end = chunk[-1]
        spans.append((len(chunk), start, end, first, last))
        start, first = end, last + 1
    return spans


def _shape(spans: list[Span]) -> list[tuple[int, int, int, int, int]]:
    return [(s.row_count, s.start, s.end, s.first_line, s.last_line) for s in spans]


# --- Clayva -----------------------------------------------------------------------------------

EVENT_LINES = [
    b'{"event": "Signed Up", "userId": "u1"}',
    b'{"event": "Signed Up", "anonymousId": "a", "timestamp": "2026-11-21T10:30:00Z"}',
    b'{"event": "Viewed", "userId": "u", "properties": {"p": 1}, "context": {"c": 2}}',
    b'{"event": "", "userId": "u1"}',
    b'{"event": " ", "userId": "u1"}',
    b'{"event": "A"}',
    b'{"event": "A", "userId": "u", "timestamp": "2026-11-21"}',
    b'{"event": "A", "userId": "u", "timestamp": "later"}',
    b'{"event": "A", "userId": "u", "timestamp": "Tuesday"}',
    b'{"event": "A", "userId": "u", "timestamp": "2026-13-01T00:00:00Z"}',
    b'{"event": "A", "userId": "u", "timestamp": 5}',
    b'{"event": "A", "userId": "u", "properties": [1]}',
    b'{"event": "A", "userId": "u", "n": 123456789012345678901}',
    # where a typed reading (msgspec) and orjson may part ways
    b'{"event": "A", "userId": 0, "anonymousId": "a"}',
    b'{"event": "A", "userId": 0, "anonymousId": ""}',
    b'{"event": "A", "userId": [], "anonymousId": {"k": 1}}',
    b'{"event": "A", "userId": "u", "timestamp": null, "properties": null}',
    b'{"event": "A", "userId": "u", "properties": {"deep": {"x": [1e400, -0.0]}}}',
    b'{"event": "A", "userId": "u", "event": 7}',
    b'{"event": 7, "userId": "u", "event": "B"}',
    b'{"event": "\\t\\n", "userId": "u"}',
    b'{"event": "\\u00e9", "userId": "u", "x": "\xc3\xa9"}',
    b'{"event": "A", "userId": "u", "x": "\xff"}',
    b'{"event": "A", "userId": "u", "x": NaN}',
    b'{"event": "A", "userId": "u", "timestamp": "2026-11-21T10:30:00+25:00"}',
    b'{"event": "A", "userId": "u", "timestamp": "2026-11-21T24:00:00"}',
    b'{"event": "A", "userId": "u", "timestamp": "2026-11-21T10:30:00.1234567Z"}',
    b'{"event": "A", "userId": "u", "context": "c"}',
    b'{"event": "A", "userId": "u"}\r',
    b'\xef\xbb\xbf{"event": "A", "userId": "u"}',
]


@SETTINGS
@given(
    lines=st.lists(st.sampled_from(EVENT_LINES + BAD), max_size=60),
    per=st.integers(1, 7),
    block=BLOCKS,
    newline_at_end=st.booleans(),
)
def test_clayva_block_pass_reports_what_a_line_at_a_time_reports(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    lines: list[bytes],
    per: int,
    block: int,
    newline_at_end: bool,
) -> None:
    monkeypatch.setattr(streams, "BLOCK", block)
    path = tmp_path / "e.jsonl"
    _write(path, lines, newline_at_end)
    expected: list[str] = []
    valid = []
    for n, end, e in _parsed(path, lines, expected):
        why = "an event must be a JSON object" if not isinstance(e, dict) else check_event(e)
        if why is not None:
            expected.append(f"{path}:{n}: {why}")
        else:
            valid.append((n, end))
    expected.sort(key=lambda p: _line_of(path, p))
    if not valid and not expected:
        with pytest.raises(SourceError, match="no events"):
            validate_events(path, per)
        return
    seen: list[str] = []
    plan = validate_events(path, per, reject=seen.append)
    assert plan.rejects is not None
    assert plan.rejects.shown == expected
    assert sorted(seen) == sorted(expected)
    assert plan.rows == len(valid)
    assert _shape(plan.spans) == _spans(valid, per)


# --- Claravine --------------------------------------------------------------------------------

ROW_LINES = [
    b'{"a": "x", "b": 1}',
    b'{"b": null, "a": "y"}',
    b'{"a": "x"}',
    b'{"a": "x", "b": 1, "c": 2}',
    b'{"c": 1, "d": 2}',
    b'{"a": [1], "b": {"z": 1}}',
    b'{"a": 123456789012345678901, "b": 1}',
]


@SETTINGS
@given(
    lines=st.lists(st.sampled_from(ROW_LINES + BAD), max_size=60),
    per=st.integers(1, 7),
    limit=st.integers(1, 6),
    block=BLOCKS,
    newline_at_end=st.booleans(),
)
def test_claravine_block_pass_reports_what_a_line_at_a_time_reports(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    lines: list[bytes],
    per: int,
    limit: int,
    block: int,
    newline_at_end: bool,
) -> None:
    monkeypatch.setattr(streams, "BLOCK", block)
    path = tmp_path / "t.jsonl"
    _write(path, lines, newline_at_end)
    problems: list[str] = []
    keys: set[str] | None = None
    header: list[str] = []
    valid = []
    for n, end, obj in _parsed(path, lines, problems):
        if not isinstance(obj, dict):
            problems.append(f"{path}:{n}: each line must be a JSON object")
        elif keys is None:
            keys, header = set(obj), list(obj)
            valid.append((n, end))
        elif set(obj) != keys:
            extra, missing = len(set(obj) - keys), len(keys - set(obj))
            problems.append(
                f"{path}:{n}: keys differ from line 1"
                + (f"; {extra} more" if extra else "")
                + (f"; {missing} missing" if missing else "")
            )
        else:
            valid.append((n, end))
    problems.sort(key=lambda p: _line_of(path, p))
    if problems:
        more = len(problems) - limit
        with pytest.raises(SourceError) as got:
            validate_table(path, per, limit=limit)
        assert str(got.value) == (
            f"{len(problems)} problems, nothing sent:\n"
            + "\n".join(problems[:limit])
            + (f"\n… and {more} more" if more > 0 else "")
        )
        return
    if not valid:
        with pytest.raises(SourceError, match="no records"):
            validate_table(path, per, limit=limit)
        return
    plan = validate_table(path, per, limit=limit)
    assert plan.fields == header
    assert plan.rows == len(valid)
    assert _shape(plan.spans) == _spans(valid, per)


# --- Clari ingest -----------------------------------------------------------------------------

T0 = 1_700_000_000_000


def _record(entity: str | None, rid: object, dt: int = 0, pad: int = 0) -> bytes:
    rec: dict[str, Any] = {"id": rid, "createdAt": T0, "updatedAt": T0 + dt, "pad": "x" * pad}
    if entity is not None:
        rec = {"sourceEntity": entity, **rec}
    return json.dumps(rec).encode()


# Numbers as a file may write them: floats in every form (some render longer: 1e5 is 100000.0).
NUMBER_TEXT = st.one_of(
    st.from_regex(r"\A-?(0|[1-9][0-9]{0,19})(\.[0-9]{1,19})?([eE][+-]?[0-9]{1,3})?\Z").filter(
        lambda t: abs(float(t)) != float("inf")
    ),
    # the forms that render longer, which a random exponent rarely is
    st.sampled_from(["1e5", "-2.5E+3", "7e1", "12345678901234567.0", "-99999999999999999.5"]),
    st.sampled_from(["1e-5", "0.5", "100.25", "0.0001", "1E0", "9999999999999999.9"]),
)


@st.composite
def _written(draw: st.DrawFn) -> bytes:
    """A valid record line written as a file may write it: spaced or not, non-ASCII escaped or
    not, with floats in any form, a repeated key, a CR before the newline."""
    entity = draw(st.sampled_from(["A", "B", "Ünï"]))
    rid = draw(st.one_of(st.integers(0, 30).map(str), st.integers(0, 3), st.uuids().map(str)))
    rec: dict[str, Any] = {"sourceEntity": entity, "id": rid, "createdAt": T0, "updatedAt": T0}
    keys = ["n", "m", "s", "l", "o", "b"]
    fields = draw(st.lists(st.sampled_from(keys), max_size=4, unique=True))
    for key in fields:
        if key == "s":
            rec[key] = draw(st.sampled_from(["10:30:00.5", 'é\n"x"', "a9e4-1.5", "N", "e"]))
        elif key == "l":
            rec[key] = [0, "z"]
        elif key == "o":
            rec[key] = {"e": 0, "t": draw(st.sampled_from([True, False, None]))}
        elif key == "b":
            rec[key] = draw(st.sampled_from([True, False, None]))
        else:
            rec[key] = 0  # a number: written below from NUMBER_TEXT
    sep = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,  ", " :\t")]))
    text = json.dumps(rec, separators=sep, ensure_ascii=draw(st.booleans()))
    for key in fields:
        if key in ("n", "m", "l", "o"):  # its first 0: a number as a file may write it
            at = text.index(f'"{key}"') + len(key) + 2
            at = text.index("0", at)
            text = text[:at] + draw(NUMBER_TEXT) + text[at + 1 :]
    if draw(st.booleans()):
        text = text[:-1] + sep[0] + '"id"' + sep[1] + json.dumps(rid) + "}"  # the same key again
    return (text + ("\r" if draw(st.booleans()) else "")).encode()


RECORD_LINES = st.one_of(
    st.builds(
        _record,
        st.sampled_from(["A", "B"]),
        st.one_of(st.integers(0, 30).map(str), st.integers(0, 3)),
        st.just(0),
        st.integers(0, 300),
    ),
    _written(),
    st.sampled_from(
        [
            _record(None, "1"),
            _record("", "1"),
            _record("A", ""),
            _record("A", "1", dt=-1),
            b'{"sourceEntity": "A", "id": "1", "createdAt": 1700000000, "updatedAt": 1700000000}',
            b'{"sourceEntity": "A", "id": "big", "createdAt": 1700000000000, '
            b'"updatedAt": 1700000000000, "n": 123456789012345678901}',
            b'{"sourceEntity": 7, "id": "7", "createdAt": 1700000000000, '
            b'"updatedAt": 1700000000000}',
            b'{"sourceEntity":"A","id":"t","createdAt":true,"updatedAt":1700000000000}',
            b'{"sourceEntity":"A","id":"f","createdAt":1.7e12,"updatedAt":1700000000000}',
            b'{"sourceEntity":"A","id":"f","createdAt":1700000000000.0,"updatedAt":1700000000000}',
            b'{"sourceEntity":"A","id":0,"createdAt":1700000000000,"updatedAt":1700000000000}',
            b'{"sourceEntity":"A","id":[],"createdAt":1700000000000,"updatedAt":1700000000000}',
            b'{"sourceEntity":"A","id":{"k":1},"createdAt":1700000000000,'
            b'"updatedAt":1700000000000}',
            b'{"sourceEntity":"A","id":"d","createdAt":1700000000000,"updatedAt":1700000000000,'
            b'"createdAt":5}',
            b'{"sourceEntity":"A","id":"n","createdAt":1700000000000,"updatedAt":1700000000000,'
            b'"x":NaN}',
            b'{"sourceEntity":["A"],"id":"e","createdAt":1700000000000,"updatedAt":1700000000000}',
            *BAD,
        ]
    ),
)


@SETTINGS
@given(
    lines=st.lists(RECORD_LINES, max_size=60),
    limit=st.sampled_from([600, 1_500, 4_000, 1 << 20]),
    block=BLOCKS,
    newline_at_end=st.booleans(),
)
def test_clari_block_pass_reports_and_plans_what_a_record_at_a_time_does(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    lines: list[bytes],
    limit: int,
    block: int,
    newline_at_end: bool,
) -> None:
    """The oracle parses a line at a time and gives each valid record to the plan's own
    record-at-a-time `add` (what the array form uses); the block pass must report the same
    problems and cut the same upload files."""
    monkeypatch.setattr(streams, "BLOCK", block)
    path = tmp_path / "r.jsonl"
    _write(path, lines, newline_at_end)
    found: list[str] = []
    oracle = Problems(path)
    plan = _FilePlan(path, limit, oracle)
    offsets = _Offsets(lines)
    too_big: str | None = None
    for n, _, rec in _parsed(path, lines, found):
        if not isinstance(rec, dict) or not rec.get("sourceEntity"):
            oracle.add(n, "each line must be a record with its sourceEntity")
            continue
        value = rec.pop("sourceEntity")
        entity = str(value)
        if (why := check_record(rec)) is not None:
            oracle.add(n, why)
            continue
        size = line_size(lines[n - 1], value, rec)  # its soundness: tested below
        try:
            plan.add(entity, rec["id"], size, offsets.block(n), 0)  # type: ignore[arg-type]
        except SourceError as exc:
            too_big = str(exc)
            break
    for problem in found:
        line = _line_of(path, problem)
        oracle.add(line, problem.split(f"{path}:{line}: ", 1)[1])
    if too_big is not None:
        with pytest.raises(SourceError) as got:
            validate_records(path, limit)
        assert str(got.value) == too_big
        return
    if oracle:
        with pytest.raises(SourceError) as got:
            validate_records(path, limit)
        assert str(got.value) == str(oracle.error("invalid records"))
        return
    spans = plan.close()
    if not plan.rows:
        with pytest.raises(SourceError, match="no records"):
            validate_records(path, limit)
        return
    got_plan = validate_records(path, limit)
    assert got_plan.rows == plan.rows
    assert _shape(got_plan.spans) == _shape(spans)


def _compact(value: Any) -> bytes:
    """What an upload file holds of a value: orjson's rendering (the json module's past 64-bit
    integers)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class _Offsets:
    """A one-line streams.Block for each line of the file (what the oracle hands `add`)."""

    def __init__(self, lines: list[bytes]) -> None:
        self.lines = lines
        self.starts = [0]
        for raw in lines:
            self.starts.append(self.starts[-1] + len(raw) + 1)

    def block(self, n: int) -> streams.Block:
        return streams.Block(n, self.starts[n - 1], [self.lines[n - 1]], Problems(Path("-")))


@SETTINGS
@given(raw=_written())
def test_a_line_is_never_planned_smaller_than_its_record_renders(raw: bytes) -> None:
    """`line_size` may be more than the record's rendering in its upload file, never less:
    spaces, escapes and a repeated key only shrink a line; a float that renders longer is
    always caught by `may_grow`."""
    rec = json.loads(raw)
    entity = rec.pop("sourceEntity")
    assert line_size(raw, entity, rec) >= len(render_item(rec))


@SETTINGS
@given(
    lines=st.lists(_written(), min_size=1, max_size=40),
    limit=st.integers(700, 3_000),
    block=BLOCKS,
)
def test_every_planned_upload_file_is_within_the_limit_as_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lines: list[bytes], limit: int, block: int
) -> None:
    """Files planned from lines' lengths are rendered no larger when sent, whatever the lines'
    spacing, escapes and floats; every record is sent once."""
    monkeypatch.setattr(streams, "BLOCK", block)
    unique = {}
    for raw in lines:
        rec = json.loads(raw)
        if rec["id"]:  # 0 is no id
            unique[(rec["sourceEntity"], str(rec["id"]))] = raw
    assume(unique)
    path = tmp_path / "r.jsonl"
    _write(path, list(unique.values()), newline_at_end=True)
    plan = validate_records(path, limit)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    sent = 0
    for upload in upload_files(path, plan.spans, out):
        assert upload.path.stat().st_size <= limit
        sent += upload.records
    assert sent == plan.rows == len(unique)


@pytest.mark.parametrize(
    ("text", "grows"),
    [
        # what real records hold costs no rendering: UUIDs, decimals, ISO times, booleans, null
        (
            b'{"sourceEntity":"Opportunity","id":"1438ecbc-8c4b-4931-9e4b-011484d3a670",'
            b'"amount":12345.67,"won":true,"lost":false,"closeDate":"2026-11-21T10:00:00.000Z",'
            b'"owner":null,"tags":["Enterprise","North"],"n":-0.5}',
            False,
        ),
        (b'{"a":1e5}', True),
        (b'{"a": [1, -2.5E+3]}', True),
        (b'{"a":NaN}', True),
        (b'{"a":12345678901234567.0}', False),  # a decimal: its slack covers it
        (b'{"a":1234567890123456.7}', False),
    ],
)
def test_which_lines_may_render_longer(text: bytes, grows: bool) -> None:
    assert may_grow(shape(text)) is grows


@pytest.mark.parametrize("kind", ["clari", "clayva"])
def test_a_lone_surrogate_escape_is_a_problem_of_its_line(tmp_path: Path, kind: str) -> None:
    """A line orjson leaves to the json module (an integer past 64 bits) that escapes half a
    surrogate pair: no UTF-8 body can carry it, so it is refused where it stands, as orjson
    refuses it elsewhere — it once passed validation and crashed the sending pass."""
    big = b'"n":123456789012345678901,"s":"\\ud800"'
    if kind == "clari":
        line = b'{"sourceEntity":"A","id":"1","createdAt":1700000000000,'
        line += b'"updatedAt":1700000000000,' + big + b"}"
        good = _record("A", "2")
    else:
        line = b'{"event":"A","userId":"u",' + big + b"}"
        good = b'{"event":"A","userId":"u"}'
    path = tmp_path / "r.jsonl"
    _write(path, [good, line], newline_at_end=True)
    why = f"{path}:2: not JSON (a lone surrogate escape in a string, not a character)"
    if kind == "clari":
        with pytest.raises(SourceError) as got:
            validate_records(path, 1 << 20)
        assert why in str(got.value)
    else:  # Clayva's invalid events are rejects, the rest sent
        plan = validate_events(path, 100)
        assert plan.rows == 1 and plan.rejects.shown == [why]


REC = b'{"sourceEntity":"A","id":"x","createdAt":1700000000000,"updatedAt":1700000000000'


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        # bytes msgspec skips unchecked, in a field it does not read
        (REC + b',"x":"\xff"}', "not UTF-8 (byte 0xff)"),
        (REC + b',"\xff":1,"f":1e5}', "not UTF-8 (byte 0xff)"),
        # a surrogate written as bytes: the json module would take it, no body can carry it
        (REC + b',"s":"\xed\xa0\x80"}', "not UTF-8 (byte 0xed)"),
        (REC + b',"x":' + b"[" * 1100 + b"]" * 1100 + b"}", "not JSON (nested too deeply)"),
        # read only by the json module (orjson refuses them), sent as rendered
        (REC + b',"x":1e400}', None),
        (REC + b',"y":1e5,"x":' + b"[" * 300 + b"]" * 300 + b"}", None),
    ],
)
def test_lines_only_one_reader_takes_are_planned_or_refused_whole(
    tmp_path: Path, line: bytes, problem: str | None
) -> None:
    """Lines where the typed reading (msgspec) and orjson part ways take the parsed path,
    which refuses them with their line or plans them as they will be sent — never a crash,
    in validation or after it (found by review: each crashed or passed one of the two)."""
    path = tmp_path / "r.jsonl"
    _write(path, [_record("A", "1"), line], newline_at_end=True)
    if problem is not None:
        with pytest.raises(SourceError) as got:
            validate_records(path, 4_000)
        assert f"{path}:2: {problem}" in str(got.value)
        return
    plan = validate_records(path, 4_000)
    out = tmp_path / "out"
    out.mkdir()
    (upload,) = upload_files(path, plan.spans, out)
    assert upload.records == 2 and upload.path.stat().st_size <= 4_000


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (b'"s":"\xed\xa0\x80"', "not UTF-8 (byte 0xed)"),  # a UnicodeDecodeError, before
        (b'"s":"\xff"', "not JSON (lexical error: invalid bytes in UTF8 string."),
    ],
)
def test_the_array_form_refuses_bytes_that_are_not_utf8(
    tmp_path: Path, text: bytes, problem: str
) -> None:
    path = tmp_path / "r.json"
    record = b'{"id":"x","createdAt":1700000000000,"updatedAt":1700000000000,' + text + b"}"
    path.write_bytes(b'[{"sourceEntity":"A","records":[' + record + b"]}]")
    with pytest.raises(SourceError) as got:
        validate_records(path, 4_000)
    assert str(got.value).startswith(f"{path}: {problem}")


@pytest.mark.parametrize(
    "number",
    [
        "12345678901234567.0",  # 1.2345678901234568e+16: 3 bytes longer, a decimal's slack
        "-99999999999999999.9",
        "10000000000000000.5",
        "1e5",  # 100000.0: rendered
        "7E+15",
        "-2.5e3",
        "1.5e15",  # 1500000000000000.0
        "NaN",  # null, by the json module: rendered
    ],
)
def test_a_compact_line_is_costed_at_least_as_its_record_renders(number: str) -> None:
    """No spaces, escapes or repeated keys to spare: the worst case for a line's cost, where
    only a decimal's slack or a rendering covers what the number grows."""
    raw = b'{"sourceEntity":"A","id":"1","n":' + number.encode() + b',"m":[' + number.encode()
    raw += b"]}"
    rec = json.loads(raw)
    entity = rec.pop("sourceEntity")
    assert line_size(raw, entity, rec) >= len(render_item(rec))
