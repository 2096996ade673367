"""A result that cannot be stored (the output directory is a file) fails the job after its
attempts, with the OS error shown; `run --once` ends instead of retrying for ever."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from orchestrator.config import Config
from orchestrator.domain import JobState
from tests.conftest import forecast
from tests.integration.helpers import all_jobs, run_once


async def test_a_result_that_cannot_be_stored_fails_the_job_with_the_os_error(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    cfg = make_config([{**forecast("f"), "max_attempts": 2}])
    cfg.output.dir.write_text("a file where the results should go")
    assert await run_once(cfg, timeout=60) == 1
    (job,) = await all_jobs(cfg)
    assert job.state == JobState.FAILED
    assert job.attempts == 2  # each round of fetch tries spent an attempt
    assert job.error is not None
    assert job.error.startswith("result not stored: [Errno 20] Not a directory")
    assert str(cfg.output.dir) in job.error
