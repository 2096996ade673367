"""Pure checks of the import kinds: Clayva events, Clari ingest records and files, clariBI
report matching, error bodies."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.domain import Job, JobState
from orchestrator.http import error_fields
from orchestrator.providers.clari_ingest import check_record, split_files
from orchestrator.providers.claribi import generation_class, recent_reports, same_generation
from orchestrator.providers.clayva import check_event

T0 = 1_700_000_000_000


@pytest.mark.parametrize(
    ("event", "why"),
    [
        ({"event": "A", "userId": "u"}, None),
        ({"event": "A", "anonymousId": "x", "timestamp": "2026-11-21T10:00:00Z"}, None),
        ({"event": " ", "userId": "u"}, "event name is empty"),
        ({"event": "A"}, "userId or anonymousId is required"),
        ({"event": "A", "userId": "u", "timestamp": "yesterday"}, "is not ISO 8601"),
        ({"event": "A", "userId": "u", "timestamp": "2026-11-21"}, "has no time"),
        ({"event": "A", "userId": "u", "properties": [1]}, "properties must be a JSON object"),
    ],
)
def test_clayva_event_checks(event: dict[str, object], why: str | None) -> None:
    got = check_event(event)
    assert (got is None) if why is None else (got is not None and why in got)


@pytest.mark.parametrize(
    ("record", "why"),
    [
        ({"id": "1", "createdAt": T0, "updatedAt": T0}, None),
        ({"createdAt": T0, "updatedAt": T0}, "id is missing"),
        ({"id": "1", "createdAt": T0, "updatedAt": T0 - 1}, "updatedAt is before createdAt"),
        ({"id": "1", "createdAt": "x", "updatedAt": T0}, "createdAt must be a number"),
        ({"id": "1", "createdAt": 1_700_000_000, "updatedAt": T0}, "looks like seconds"),
        ({"id": "1", "createdAt": T0, "updatedAt": True}, "updatedAt must be a number"),
    ],
)
def test_ingest_record_checks(record: dict[str, object], why: str | None) -> None:
    got = check_record(record)
    assert (got is None) if why is None else (got is not None and why in got)


@settings(max_examples=50, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 300), min_size=1, max_size=200),
    limit=st.integers(1_024, 8_192),
)
def test_ingest_files_stay_under_the_limit_and_keep_every_record(
    sizes: list[int], limit: int
) -> None:
    records = [
        (f"ent{i % 3}", {"id": str(i), "createdAt": T0, "updatedAt": T0, "pad": "x" * n}, f"r{i}")
        for i, n in enumerate(sizes)
    ]
    files = list(split_files(records, limit))
    assert all(len(f) <= limit for f in files)
    seen = []
    for f in files:
        for block in json.loads(f):
            seen += [(block["sourceEntity"], r["id"]) for r in block["records"]]
    assert sorted(seen) == sorted((e, r["id"]) for e, r, _ in records)


def test_report_candidates_are_the_unowned_made_after_the_call_in_our_format() -> None:
    reports = [
        {"id": "a", "output_format": "pdf", "created_at": "2026-11-22T10:00:00Z"},
        {"id": "b", "output_format": "pdf", "created_at": "2026-11-22T10:05:00Z"},
        {"id": "c", "output_format": "pdf", "created_at": "2026-11-22T10:06:00Z"},
        {"id": "d", "output_format": "csv", "created_at": "2026-11-22T10:05:30Z"},
    ]
    since = 1795341840.0  # 2026-11-22T10:04:00Z
    assert [r["id"] for r in recent_reports(reports, since, "pdf", set())] == ["b", "c"]
    assert [r["id"] for r in recent_reports(reports, since, "pdf", {"b"})] == ["c"]
    assert recent_reports(reports, since, "json", set()) == []


def test_a_report_is_ours_only_if_its_details_name_our_template_and_sources() -> None:
    job = Job(
        id=1,
        pipeline="p",
        kind="claribi.report",
        provider="claribi",
        state=JobState.RUNNING,
        params={"template_id": "t1", "data_source_ids": ["s2", "s1"], "output_format": "pdf"},
        idempotency_key="k",
    )
    src = [{"id": "s1", "name": "x"}, {"id": "s2", "name": "y"}]
    assert same_generation({"template": "t1", "data_sources": src}, job)
    assert same_generation({"template": "t1"}, job)  # sources not echoed: template decides
    assert not same_generation({"template": "t2", "data_sources": src}, job)
    assert not same_generation({"template": "t1", "data_sources": src[:1]}, job)
    other = Job(
        id=2,
        pipeline="p",
        kind="claribi.report",
        provider="claribi",
        state=JobState.RUNNING,
        params={"template_id": "t1", "data_source_ids": ["s1", "s2"], "output_format": "pdf"},
        idempotency_key="k2",
    )
    assert generation_class(job) == generation_class(other)  # one class: never both in the air


def test_error_fields_read_clari_ingest_arrays() -> None:
    body = [
        {"errorCode": "TOO_MANY_REQUESTS", "errorSummary": "Max concurrent jobs"},
        {"errorCode": "X", "errorSummary": "second"},
    ]
    assert error_fields(body) == ("TOO_MANY_REQUESTS", "Max concurrent jobs; second")


def test_generation_wait_respects_hour_and_day() -> None:
    from orchestrator.providers.claribi import generation_wait

    now = 100_000.0
    assert generation_wait([], now, 2, 5) == 0
    assert generation_wait([now - 10], now, 2, 5) == 0
    # two in the last hour: wait until the older leaves the hour
    assert generation_wait([now - 10, now - 100], now, 2, 5) == 3600 - 100
    # five in the day (none in the hour): wait until the oldest leaves the day
    day = [now - 4000 - i for i in range(5)]
    assert generation_wait(day, now, 2, 5) == 86400 - 4004
    assert generation_wait([now - 90_000] * 10, now, 2, 5) == 0  # older than a day
