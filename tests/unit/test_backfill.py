"""Backfill's pure parts: the half-open range, time parsing, the quota arithmetic, and the
missed-run policy 'all'."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.backfill import BackfillError, QuotaCheck, fire_times_in, parse_when
from orchestrator.schedule import missed_runs, parse_schedule

H = timedelta(hours=1)


def test_range_is_half_open() -> None:
    trig = parse_schedule("0 * * * *")
    start = datetime(2026, 11, 1, 0, tzinfo=UTC)
    fires = fire_times_in(trig, start, start + 3 * H)
    assert fires == [start, start + H, start + 2 * H]
    assert fire_times_in(trig, start + timedelta(seconds=1), start + H) == []


def test_dates_and_naive_times_are_in_the_daemon_timezone() -> None:
    assert parse_when("2026-11-01", "UTC") == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_when("2026-07-01", "Europe/Berlin") == datetime(2026, 6, 30, 22, tzinfo=UTC)
    assert parse_when("2026-11-01T06:00:00Z", "Europe/Berlin") == datetime(
        2026, 11, 1, 6, tzinfo=UTC
    )
    with pytest.raises(BackfillError, match="not a date"):
        parse_when("last tuesday", "UTC")


def test_quota_check_counts_queued_jobs_and_keeps_the_reserve() -> None:
    check = QuotaCheck(provider="clari", left=10, queued=3, needed=5, reserve=2)
    assert check.left_after == 2 and check.ok
    short = QuotaCheck(provider="clari", left=10, queued=3, needed=6, reserve=2)
    assert short.left_after == 1 and not short.ok
    assert "1 submission(s)" in short.refusal() and "quota_reserve of 2" in short.refusal()
    assert QuotaCheck(provider="x", left=None, queued=9, needed=9, reserve=5).ok  # no limit known


def test_missed_runs_all_enqueues_every_missed_fire_up_to_the_cap() -> None:
    trig = parse_schedule("every 1h")
    now = datetime(2026, 11, 22, 5, 30, tzinfo=UTC)
    last = now - 5 * H - timedelta(minutes=30)  # 00:00; missed 01:00 .. 05:00
    assert missed_runs(trig, last, now, "all") == [last + n * H for n in range(1, 6)]
    assert missed_runs(trig, last, now, "all", 2) == [last + 4 * H, last + 5 * H]
    assert missed_runs(trig, last, now, "catch_up", 2) == [last + 5 * H]
    assert missed_runs(trig, None, now, "all") == []
