"""Pipeline health and schedule arithmetic (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from orchestrator.domain import JobState, PipelineRuns
from orchestrator.pipelines import health, next_fires, nominal_interval
from orchestrator.schedule import parse_schedule

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)  # a Wednesday
DAY = timedelta(days=1)


def runs(**kw: object) -> PipelineRuns:
    return PipelineRuns(pipeline="p", last_run_id=1, **kw)  # type: ignore[arg-type]


def test_failing_wins_over_everything_even_when_disabled() -> None:
    r = runs(last_run_state=JobState.FAILED, consecutive_failures=1, last_success_at=NOW)
    assert health(scheduled=True, runs=r, interval=DAY, now=NOW) == "failing"
    assert health(scheduled=False, runs=r, interval=None, now=NOW) == "failing"


def test_late_after_two_intervals_without_success() -> None:
    just = runs(last_success_at=NOW - 2 * DAY)
    assert health(scheduled=True, runs=just, interval=DAY, now=NOW) == "ok"
    past = runs(last_success_at=NOW - 2 * DAY - timedelta(seconds=1))
    assert health(scheduled=True, runs=past, interval=DAY, now=NOW) == "late"


def test_never_succeeded_is_late_counted_from_its_first_job() -> None:
    old = runs(last_run_state=JobState.CANCELLED, first_created_at=NOW - 3 * DAY)
    assert health(scheduled=True, runs=old, interval=DAY, now=NOW) == "late"
    new = runs(last_run_state=JobState.PENDING, first_created_at=NOW - DAY)
    assert health(scheduled=True, runs=new, interval=DAY, now=NOW) == "ok"


def test_unscheduled_is_idle_and_no_history_is_ok() -> None:
    assert health(scheduled=False, runs=runs(), interval=None, now=NOW) == "idle"
    assert health(scheduled=False, runs=None, interval=None, now=NOW) == "idle"
    assert health(scheduled=True, runs=None, interval=DAY, now=NOW) == "ok"


def test_next_fires_of_a_schedule_that_never_fires_is_empty() -> None:
    assert next_fires(parse_schedule("0 0 30 2 *"), NOW, 5) == []


def test_next_fires_are_utc_and_strictly_after_now() -> None:
    fires = next_fires(parse_schedule("0 12 * * *", "Europe/Berlin"), NOW, 3)
    assert fires == [datetime(2026, 12, d, 11, 0, tzinfo=UTC) for d in (3, 4, 5)]
    assert next_fires(parse_schedule("every 1h"), NOW, 1) == [NOW + timedelta(hours=1)]


def test_weekday_schedule_interval_is_its_weekend() -> None:
    assert nominal_interval(parse_schedule("0 6 * * MON-FRI"), NOW) == 3 * DAY
    assert nominal_interval(parse_schedule("every 15m"), NOW) == timedelta(minutes=15)
    assert nominal_interval(parse_schedule("0 0 30 2 *"), NOW) is None


def test_schedules_in_words() -> None:
    from orchestrator.pipelines import schedule_in_words as words

    assert words("every 15m") == "every 15 minutes"
    assert words("every 1h30m") == "every 1 hour 30 minutes"
    assert words(None) == "only when triggered"
    assert words("*/5 * * * *") == "every 5 minutes"
    assert words("7 * * * *") == "hourly at :07"
    assert words("0 6 * * *") == "daily at 06:00 (UTC)"
    assert words("30 7 * * MON", "Europe/Berlin") == "at 07:30 (Europe/Berlin), Mondays"
    assert words("0 6 * * MON-FRI") == "at 06:00 (UTC), Monday to Friday"
    assert words("0 6 * * 1,3") == "at 06:00 (UTC), Mondays, Wednesdays"
    assert words("0 0 30 2 *") == "cron 0 0 30 2 * (UTC)"
