"""The status page of a live daemon in headless Chromium (Debian's; nothing is downloaded):
it loads, shows the jobs running right now, and the run leaves a screenshot."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.acceptance.helpers import cli, http_json, jobs_json, start_daemon, wait_until
from tests.conftest import API_KEY, forecast, free_port, write_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[2] / ".artifacts"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_status_page_shows_running_jobs(tmp_path: Path, simulator: str) -> None:
    http_json(simulator + "/_sim/config", {"duration": 60, "concurrent_limit": 2})
    port = free_port()
    pipelines = [forecast(f"export-{i}") for i in range(4)]
    config = write_config(tmp_path, simulator, pipelines, api_key=API_KEY)
    config.write_text(config.read_text().replace("port = 0", f"port = {port}"))
    for p in pipelines:
        cli("trigger", p["name"], "--config", str(config), check=True)
    daemon = start_daemon(config)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until(lambda: sum(j["state"] == "RUNNING" for j in jobs_json(config)) >= 2, daemon)
        running = [j for j in jobs_json(config) if j["state"] == "RUNNING"]
        profile = tmp_path / "chromium-profile"
        common = [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}"]
        dom = subprocess.run(
            [*common, "--dump-dom", url], capture_output=True, text=True, timeout=60, check=False
        ).stdout
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "status-page.png"
        shot.unlink(missing_ok=True)
        subprocess.run(
            [*common, f"--screenshot={shot}", "--window-size=1280,1000", url],
            capture_output=True,
            timeout=60,
            check=False,
        )
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.headers["Content-Type"].startswith("text/html")
    finally:
        daemon.terminate()
        daemon.wait(60)
    assert '<table id="in-flight">' in dom
    for job in running:
        assert f"<td>{job['remote_id']}</td>" in dom
    assert dom.count('class="s RUNNING"') >= 2
    assert "Provider accounts" in dom and "Last 24 hours" in dom
    assert API_KEY not in dom
    assert shot.exists() and shot.stat().st_size > 10_000
