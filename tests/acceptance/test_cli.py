"""The CLI as a user runs it: subprocesses, a simulator in its own process, kill -9."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.acceptance.helpers import cli, http_json, jobs_json, start_daemon, wait_until
from tests.conftest import API_KEY, forecast, write_config

pytestmark = pytest.mark.slow


def test_kill_9_mid_run_then_exit_when_idle_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, simulator: str
) -> None:
    config = write_config(
        tmp_path, simulator, [forecast(f"f{i}") for i in range(10)], api_key=API_KEY
    )
    daemon = start_daemon(config, "--once")
    # Kill it while jobs are in every state: some submitted, some still pending.
    wait_until(lambda: int(http_json(simulator + "/_sim/stats")["created"]) >= 3, daemon)
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.wait(10)
    before = {j["state"] for j in jobs_json(config)}
    assert before - {"SUCCEEDED"}, "the kill came too late to test anything"

    resumed = cli("run", "--exit-when-idle", "--config", str(config))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    jobs = jobs_json(config)
    assert len(jobs) == 10
    assert {j["state"] for j in jobs} == {"SUCCEEDED"}
    stats = http_json(simulator + "/_sim/stats")
    assert stats["created"] == 10  # type: ignore[index]  # not one export made twice
    assert len({j["remote_id"] for j in jobs}) == 10
    import hashlib

    for j in jobs:
        data = Path(str(j["result_path"])).read_bytes()
        assert len(data) == j["result_bytes"]
        assert hashlib.sha256(data).hexdigest() == j["result_sha256"]
    assert list((tmp_path / "results").rglob(".*.part")) == []
    assert API_KEY not in resumed.stderr + resumed.stdout


def test_cli_contract(tmp_path: Path, simulator: str) -> None:
    config = write_config(
        tmp_path, simulator, [{**forecast("weekly"), "schedule": "0 6 * * MON"}], api_key=API_KEY
    )
    ok = cli("check-config", "--config", str(config))
    assert ok.returncode == 0 and "ok" in ok.stdout

    trig = cli("trigger", "weekly", "--config", str(config), check=True)
    assert "enqueued" in trig.stdout
    checked = json.loads(cli("check-config", "--json", "--config", str(config)).stdout)
    assert checked == {
        "ok": True,
        "file": str(config),
        "providers": ["clari"],
        "pipelines": ["weekly"],
        "warnings": [],
    }
    assert cli("trigger", "nope", "--config", str(config)).returncode == 2

    run = cli("run", "--exit-when-idle", "--config", str(config))
    assert run.returncode == 0, run.stderr[-2000:]
    (job,) = jobs_json(config)
    for key in (
        "id",
        "pipeline",
        "kind",
        "state",
        "remote_id",
        "attempts",
        "created_at",
        "finished_at",
        "result_path",
        "result_bytes",
        "result_sha256",
        "error",
    ):
        assert key in job
    assert job["state"] == "SUCCEEDED"

    show = json.loads(cli("jobs", "show", str(job["id"]), "--json", "--config", str(config)).stdout)
    assert [t["to"] for t in show["transitions"]][-1] == "SUCCEEDED"

    retry = cli("jobs", "retry", str(job["id"]), "--config", str(config))
    assert retry.returncode == 2  # only FAILED/CANCELLED jobs are retried

    queued = json.loads(cli("trigger", "weekly", "--json", "--config", str(config)).stdout)
    assert queued["state"] == "PENDING"
    pending = [j for j in jobs_json(config) if j["state"] == "PENDING"]
    assert [j["id"] for j in pending] == [queued["id"]]
    cancel = cli("jobs", "cancel", str(pending[0]["id"]), "--config", str(config), check=True)
    assert "cancelled" in cancel.stdout
    again = cli("jobs", "retry", str(pending[0]["id"]), "--config", str(config), check=True)
    assert "retry of" in again.stdout

    watch = cli("jobs", "watch", "--iterations", "2", "--interval", "0.1", "--config", str(config))
    assert watch.returncode == 0, watch.stderr
    assert "SUCCEEDED" in watch.stdout and "CANCELLED" in watch.stdout
    assert str(job["result_path"])[:30] in watch.stdout

    quota = json.loads(cli("quota", "--json", "--config", str(config), check=True).stdout)
    assert quota["clari"]["used"] == 1
    assert quota["clari"]["concurrency_limit"] == 4
    assert quota["clari"]["projected_30d"] in (4, 5)
    assert API_KEY not in json.dumps(quota)


def test_bad_config_exits_2_with_file_and_line(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, "http://127.0.0.1:1/clari/v4", [forecast("f", timePeriod="Q4-2026")]
    )
    as_json = cli("check-config", "--json", "--config", str(config))
    assert as_json.returncode == 2
    report = json.loads(as_json.stdout)
    assert report["ok"] is False and "timePeriod" in report["problems"][0]
    proc = cli("check-config", "--config", str(config))
    assert proc.returncode == 2
    assert f"{config}:" in proc.stderr and "timePeriod" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert cli("run", "--once", "--config", str(config)).returncode == 2
