"""The daemon as systemd runs it: sd_notify messages in order, SIGTERM drains and exits 0, the
next start finishes everything without a duplicate export."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.acceptance.helpers import cli, http_json, jobs_json, start_daemon, wait_until
from tests.conftest import API_KEY, forecast, write_config

pytestmark = pytest.mark.slow


def test_sigterm_drains_exits_0_and_the_next_start_resumes(
    tmp_path: Path,
    simulator: str,
) -> None:
    pipelines = [forecast(f"f{i}") for i in range(8)]
    config = write_config(tmp_path, simulator, pipelines, api_key=API_KEY)
    for p in pipelines:
        cli("trigger", p["name"], "--config", str(config), check=True)

    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(20)
    env = dict(os.environ, NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="400000")
    daemon = start_daemon(config, stderr=subprocess.PIPE, env=env)
    try:
        messages = [sock.recv(4096).decode()]
        assert messages[0].startswith("READY=1"), messages
        while sum("WATCHDOG=1" in m for m in messages) < 2:
            messages.append(sock.recv(4096).decode())
        wait_until(lambda: int(http_json(simulator + "/_sim/stats")["created"]) >= 3, daemon)
        daemon.send_signal(signal.SIGTERM)
        while not messages[-1].startswith("STOPPING=1"):
            messages.append(sock.recv(4096).decode())
        _, err = daemon.communicate(timeout=40)
        assert daemon.returncode == 0, err.decode()[-2000:]
    finally:
        if daemon.poll() is None:
            daemon.kill()
        sock.close()
    kinds = [m.split("=", 1)[0] for m in messages]
    assert kinds[0] == "READY" and kinds[-1] == "STOPPING" and "WATCHDOG" in kinds
    assert any("STATUS=in flight" in m for m in messages)

    states = {j["state"] for j in jobs_json(config)}
    assert states <= {"PENDING", "SUBMITTING", "RUNNING", "FETCHING", "SUCCEEDED"}

    resumed = cli("run", "--exit-when-idle", "--config", str(config))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    jobs = jobs_json(config)
    assert {j["state"] for j in jobs} == {"SUCCEEDED"}
    assert http_json(simulator + "/_sim/stats")["created"] == len(pipelines)
    assert API_KEY not in err.decode() + resumed.stderr
    # Under systemd (stderr not a terminal) every log line is one JSON object with an event.
    import json

    lines = [line for line in (err.decode() + resumed.stderr).splitlines() if line.strip()]
    assert lines
    for line in lines:
        record = json.loads(line)
        assert record["event"] and record["level"] and record["timestamp"]
    assert any(json.loads(line).get("job_id") for line in lines)
    # One line per finished job, carrying where its result went.
    finished = [r for r in map(json.loads, lines) if r["event"] == "job_finished"]
    assert sorted(r["job_id"] for r in finished) == sorted(j["id"] for j in jobs)
    for r in finished:
        assert r["state"] == "SUCCEEDED" and r["path"] and r["bytes"] > 0 and "rows" in r


def test_second_signal_exits_at_once_and_safely(tmp_path: Path, simulator: str) -> None:
    """A first SIGTERM starts a drain of long downloads; a second one ends it at once."""
    http_json(simulator + "/_sim/config", {"duration": 0.1, "result_bytes": 500_000_000})
    pipelines = [forecast(f"big{i}") for i in range(2)]
    config = write_config(
        tmp_path, simulator, pipelines, api_key=API_KEY, daemon={"drain_timeout": "120s"}
    )
    for p in pipelines:
        cli("trigger", p["name"], "--config", str(config), check=True)
    daemon = start_daemon(config)
    try:
        wait_until(lambda: any(j["state"] == "FETCHING" for j in jobs_json(config)), daemon)
        daemon.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert daemon.poll() is None  # draining
        t0 = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(15)
        assert time.monotonic() - t0 < 10
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert daemon.returncode == 0
    # Whatever was cut off is at most a hidden .part file: every final name is a finished result.
    finals = {str(p) for p in (tmp_path / "results").rglob("*.csv")}
    done = {j["result_path"] for j in jobs_json(config) if j["state"] == "SUCCEEDED"}
    assert finals <= done
    resumed = cli("run", "--exit-when-idle", "--config", str(config))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert {j["state"] for j in jobs_json(config)} == {"SUCCEEDED"}
    assert http_json(simulator + "/_sim/stats")["created"] == len(pipelines)
