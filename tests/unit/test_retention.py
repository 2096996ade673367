"""Retention's decision over random histories (hypothesis): it never picks what it must keep,
and it does pick everything else that is old enough."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.domain import TERMINAL, JobState
from orchestrator.retention import JobFacts, decide, newest_successes

NOW = datetime(2026, 12, 1, tzinfo=UTC)
DAY = timedelta(days=1)
FILES = [f"/srv/inbox/{n}.csv" for n in range(4)] + [f"/out/p/{n}.csv" for n in range(6)]


@st.composite
def histories(draw: st.DrawFn) -> list[JobFacts]:
    jobs = []
    for i in range(draw(st.integers(0, 30))):
        state = draw(st.sampled_from(list(JobState)))
        terminal = state in TERMINAL
        path = draw(st.sampled_from([None, *FILES])) if state == JobState.SUCCEEDED else None
        reads = draw(st.sampled_from([None, *FILES]))
        jobs.append(
            JobFacts(
                id=i + 1,
                pipeline=draw(st.sampled_from("abc")),
                state=state,
                finished_at=NOW - DAY * draw(st.integers(0, 500)) if terminal else None,
                result_path=path,
                result_bytes=10 if path else None,
                result_ours=path is not None and path.startswith("/out/"),
                import_file=reads,
                import_file_exists=reads is not None and draw(st.booleans()),
            )
        )
    return jobs


ages = st.sampled_from([None, 30 * DAY, 90 * DAY, 400 * DAY])


@settings(max_examples=400, deadline=None)
@given(histories(), ages, ages)
def test_prune_keeps_what_it_must_and_takes_the_rest(
    jobs: list[JobFacts], results_age: timedelta | None, jobs_age: timedelta | None
) -> None:
    d = decide(jobs, NOW, results_age, jobs_age)
    newest = newest_successes(jobs)
    pending_reads = {j.import_file for j in jobs if j.state not in TERMINAL and j.import_file}
    files = {j.id for j in d.results}
    rows = {j.id for j in d.jobs}
    assert not files & rows and len(files) == len(d.results) and len(rows) == len(d.jobs)
    for j in [*d.results, *d.jobs]:
        assert j.state in TERMINAL and j.finished_at is not None
        assert j.id not in newest  # each pipeline's newest success stays, with its file
        assert j.result_path is None or j.result_path not in pending_reads
    for j in d.results:
        assert j.result_ours and j.result_path  # never a file outside [output] dir
        assert results_age is not None and NOW - j.finished_at > results_age  # type: ignore[operator]
    for j in d.jobs:
        assert not (j.import_file and j.import_file_exists)  # its key stops a re-import
        assert jobs_age is not None and NOW - j.finished_at > jobs_age  # type: ignore[operator]

    for j in jobs:  # and everything else old enough goes
        if j.state not in TERMINAL or j.id in newest:
            continue
        if j.result_path is not None and j.result_path in pending_reads:
            continue
        age = NOW - j.finished_at  # type: ignore[operator]
        importing = j.import_file is not None and j.import_file_exists
        if jobs_age is not None and age > jobs_age and not importing:
            assert j.id in rows
        elif results_age is not None and age > results_age and j.result_ours:
            assert j.id in files


def test_newest_success_is_by_finish_time_then_id() -> None:
    def job(i: int, pipeline: str, state: JobState, days_ago: int) -> JobFacts:
        return JobFacts(id=i, pipeline=pipeline, state=state, finished_at=NOW - days_ago * DAY)

    jobs = [
        job(1, "a", JobState.SUCCEEDED, 5),
        job(2, "a", JobState.SUCCEEDED, 9),  # enqueued later, finished earlier
        job(3, "a", JobState.FAILED, 1),
        job(4, "b", JobState.SUCCEEDED, 3),
        job(5, "b", JobState.SUCCEEDED, 3),
    ]
    assert newest_successes(jobs) == {1, 5}
