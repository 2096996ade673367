from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.schedule import (
    fire_times_between,
    latest_fire_time,
    missed_runs,
    parse_schedule,
)
from orchestrator.templating import TemplateError, render, render_str

FIRE = datetime(2026, 1, 5, 6, 0, tzinfo=UTC)  # a Monday in Q1


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ day }}", "2026-01-05"),
        ("{{ day-1 }}", "2026-01-04"),
        ("{{day-1|datetime}}", "2026-01-04T00:00:00Z"),
        ("{{ week_start }}", "2026-01-05"),
        ("{{ week_start-1 }}", "2025-12-29"),
        ("{{ month_start-1 }}", "2025-12-01"),
        ("{{ month_start+2 }}", "2026-03-01"),
        ("{{ quarter }}", "2026_Q1"),
        ("{{ quarter-1 }}", "2025_Q4"),
        ("{{ fire }}", "2026-01-05T06:00:00Z"),
        ("from {{ day-7 }} to {{ day }}", "from 2025-12-29 to 2026-01-05"),
    ],
)
def test_relative_dates(template: str, expected: str) -> None:
    assert render_str(template, FIRE) == expected


def test_render_walks_structures_and_leaves_other_values() -> None:
    assert render({"a": ["{{ day }}", 3, True]}, FIRE) == {"a": ["2026-01-05", 3, True]}


def test_unknown_expression_is_an_error() -> None:
    with pytest.raises(TemplateError, match="unknown date expression"):
        render_str("{{ yesterday }}", FIRE)


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)))
def test_quarter_is_always_well_formed(when: datetime) -> None:
    q = render_str("{{ quarter }}", when.replace(tzinfo=UTC))
    year, quarter = q.split("_Q")
    assert int(year) == when.year and int(quarter) == (when.month - 1) // 3 + 1


def test_cron_fire_times() -> None:
    trig = parse_schedule("0 6 * * MON")
    times = fire_times_between(trig, FIRE - timedelta(days=15), FIRE)
    assert times == [FIRE - timedelta(days=14), FIRE - timedelta(days=7), FIRE]


def test_interval_schedule_is_anchored_so_restarts_agree() -> None:
    a = parse_schedule("every 15m")
    b = parse_schedule("every 15m")
    now = datetime(2026, 11, 22, 10, 7, 30, tzinfo=UTC)
    assert latest_fire_time(a, now, timedelta(hours=1)) == datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    assert latest_fire_time(a, now, timedelta(hours=1)) == latest_fire_time(
        b, now, timedelta(hours=1)
    )


@pytest.mark.parametrize("spec", ["every 0m", "every", "0 6 * *", "61 * * * *", "hourly"])
def test_bad_schedules(spec: str) -> None:
    with pytest.raises(ValueError, match="schedule"):
        parse_schedule(spec)


def test_missed_run_policies() -> None:
    trig = parse_schedule("every 1h")
    last = datetime(2026, 11, 22, 1, 0, tzinfo=UTC)
    now = datetime(2026, 11, 22, 5, 30, tzinfo=UTC)
    assert missed_runs(trig, last, now, "skip") == []
    assert missed_runs(trig, last, now, "catch_up") == [datetime(2026, 11, 22, 5, 0, tzinfo=UTC)]
    assert missed_runs(trig, None, now, "catch_up") == []  # never ran: nothing missed
    assert missed_runs(trig, now, now, "catch_up") == []
