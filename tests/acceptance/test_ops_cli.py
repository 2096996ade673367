"""Issue 18's smaller commands as a user runs them: check-config warnings, trigger and retry on
import files, run --once summaries, jobs watch into a pipe, [daemon] log_level."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.acceptance.helpers import cli, jobs_json
from tests.conftest import API_KEY, API_SECRET, forecast, write_config

pytestmark = pytest.mark.slow
DATASET = "4f1c2a9e-0000-4000-8000-000000000001"


def line_of(path: Path, needle: str) -> int:
    return next(i for i, t in enumerate(path.read_text().splitlines(), 1) if needle in t)


def test_check_config_warnings_and_uncapped_projection(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        "http://127.0.0.1:9/clari/v4",
        [
            {**forecast("never"), "schedule": "0 0 30 2 *"},
            {**forecast("busy"), "schedule": "every 1s"},
            {
                "name": "taxonomy",
                "kind": "claravine.submission",
                "params": {"dataset": DATASET, "source": f"{tmp_path}/inbox/*.csv"},
            },
        ],
        provider={"monthly_quota": 1000, "quota_reserve": 100},
        providers={"claravine": {"base_url": "http://127.0.0.1:9/v1", "api_secret": API_SECRET}},
    )
    text = cli("check-config", "--config", str(config))
    assert text.returncode == 0 and "ok (" in text.stdout
    warnings = text.stderr.splitlines()
    assert warnings == [
        f"{config}:{line_of(config, '30 2')}: warning: pipeline 'never': '0 0 30 2 *' never fires",
        f"{config}:{line_of(config, 'every 1s')}: warning: pipeline 'busy': 'every 1s' fires "
        "more than once a minute (2,592,000 runs in 30 days)",
        f"{config}:{line_of(config, 'inbox')}: warning: pipeline 'taxonomy': "
        f"'{tmp_path}/inbox/*.csv' matches no file",
        f"{config}:{line_of(config, 'monthly_quota')}: warning: provider 'clari': the schedules "
        "would submit 2,592,000 jobs in 30 days, over the 900 its quota allows "
        "(monthly_quota 1,000 less quota_reserve 100)",
    ]
    as_json = json.loads(cli("check-config", "--json", "--config", str(config)).stdout)
    assert as_json["ok"] is True and as_json["warnings"] == warnings

    assert cli("db", "upgrade", "--config", str(config)).returncode == 0  # read-only: needs one
    quota = json.loads(cli("quota", "--json", "--offline", "--config", str(config)).stdout)
    assert quota["clari"]["projected_30d"] == 2_592_000  # not capped at 100,000
    assert quota["clari"]["quota_warning"] == (
        "the schedules would submit 2,592,000 jobs in 30 days, over the 900 the quota allows "
        "(1,000 less quota_reserve 100)"
    )
    table = cli("quota", "--offline", "--config", str(config))
    assert f"warning: clari: {quota['clari']['quota_warning']}" in table.stderr

    trig = cli("trigger", "taxonomy", "--config", str(config))
    assert trig.returncode == 0
    assert f"its source '{tmp_path}/inbox/*.csv' matches no file" in trig.stdout


def test_retry_of_an_import_whose_file_changed_is_refused(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.csv").write_text("Campaign Name\nfirst\n")
    config = write_config(
        tmp_path,
        "http://127.0.0.1:9/clari/v4",
        [
            {
                "name": "taxonomy",
                "kind": "claravine.submission",
                "params": {"dataset": DATASET, "source": f"{inbox}/*.csv"},
            }
        ],
        providers={"claravine": {"base_url": "http://127.0.0.1:9/v1", "api_secret": API_SECRET}},
    )
    job = json.loads(cli("trigger", "taxonomy", "--json", "--config", str(config)).stdout)["id"]
    (inbox / "b.csv").write_text("Campaign Name\nother\n")
    show = cli("pipelines", "show", "taxonomy", "--json", "--config", str(config), check=True)
    preview = {Path(f["file"]).name: f["new"] for f in json.loads(show.stdout)["source_files"]}
    assert preview == {"a.csv": False, "b.csv": True}  # what the next run would enqueue
    (inbox / "b.csv").unlink()
    cli("jobs", "cancel", str(job), "--config", str(config), check=True)
    (inbox / "a.csv").write_text("Campaign Name\nsecond\n")
    changed = cli("jobs", "retry", str(job), "--config", str(config))
    assert changed.returncode == 2
    assert f"job {job} cannot be retried: its source file {inbox}/a.csv changed" in changed.stderr
    (inbox / "a.csv").unlink()
    gone = cli("jobs", "retry", str(job), "--config", str(config))
    assert gone.returncode == 2 and "is gone" in gone.stderr
    assert len(jobs_json(config)) == 1  # nothing was enqueued


def test_run_once_json_summary_log_level_and_watch_lines(tmp_path: Path, simulator: str) -> None:
    config = write_config(
        tmp_path,
        simulator,
        [forecast("f1"), forecast("f2")],
        api_key=API_KEY,
        daemon={"log_level": "WARNING"},
    )
    assert cli("db", "upgrade", "--config", str(config)).returncode == 0  # watch needs a ledger
    watch = subprocess.Popen(  # off a terminal: plain lines, one per change
        [
            sys.executable,
            "-m",
            "orchestrator",
            "jobs",
            "watch",
            "--interval=0.1",
            f"--config={config}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        run = cli("run", "--once", "--json", "--config", str(config))
        assert run.returncode == 0, run.stderr[-2000:]
        time.sleep(1.0)
    finally:
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=20)
    summary = json.loads(run.stdout)
    assert summary["exit_code"] == 0 and summary["jobs_by_state"] == {"SUCCEEDED": 2}
    assert [j["pipeline"] for j in summary["jobs"]] == ["f1", "f2"]
    assert "job_finished" not in run.stderr  # an INFO event, below log_level = "WARNING"

    lines = out.splitlines()
    assert lines, err
    assert all(" job " in line and "│" not in line and "┃" not in line for line in lines)
    last: dict[str, str] = {}
    for line in lines:  # "<time> job <id> <pipeline> [<before> ->] <state> [<where>]"
        words = line.split(" ")
        job_id, rest = words[2], words[4:]
        if len(rest) >= 3 and rest[1] == "->":
            assert rest[0] == last.get(job_id) != rest[2], line  # a change, from what it was
            last[job_id] = rest[2]
        else:
            assert job_id not in last, line  # first sight
            last[job_id] = rest[0]
    assert set(last.values()) == {"SUCCEEDED"} and len(last) == 2
    assert any(str(tmp_path / "results") in line for line in lines)  # where the result went

    bad = cli("run", "--json", "--config", str(config))
    assert bad.returncode == 2 and "--once" in bad.stderr


def test_run_once_prints_a_summary_table_on_a_terminal(tmp_path: Path, simulator: str) -> None:
    import os

    config = write_config(tmp_path, simulator, [forecast("f1")], api_key=API_KEY)
    main, term = os.openpty()  # stdout is a terminal, as when a person runs it
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", "--once", f"--config={config}"],
        stdout=term,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "200"},
    )
    os.close(term)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the terminal's other end closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    assert proc.wait(60) == 0
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert "run: 1 SUCCEEDED; results under" in screen
    assert "f1" in screen and "SUCCEEDED" in screen and "┃" in screen  # a drawn table


def test_check_config_online_warns_against_the_providers_own_quota(
    tmp_path: Path, simulator: str
) -> None:
    config = write_config(
        tmp_path, simulator, [{**forecast("minutely"), "schedule": "every 1m"}], api_key=API_KEY
    )
    offline = json.loads(cli("check-config", "--json", "--config", str(config)).stdout)
    assert offline["warnings"] == []  # no cap of ours to compare with
    online = cli("check-config", "--online", "--json", "--config", str(config))
    assert online.returncode == 0, online.stdout
    (warning,) = json.loads(online.stdout)["warnings"]
    assert warning == (
        f"{config}:{line_of(config, 'base_url')}: warning: provider 'clari' (its own monthly "
        "quota): the schedules would submit 43,200 jobs in 30 days, over the 1,000 the quota "
        "allows (1,000 less quota_reserve 0)"
    )
    text = cli("check-config", "--online", "--config", str(config))
    assert text.returncode == 0 and warning in text.stderr
