"""What the machine may refuse, as a user meets it: one line naming the key and the file, exit 2,
no traceback; read-only commands that need neither secrets nor a new ledger; SIGTERM exits 0
whatever the jobs did."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.acceptance.helpers import cli, http_json, jobs_json, start_daemon, wait_until
from tests.conftest import API_KEY, forecast, write_config

pytestmark = pytest.mark.slow


def one_line_error(proc: subprocess.CompletedProcess[str], config: Path, fragment: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("{")]  # not logs
    assert len(lines) == 1 and lines[0].startswith(f"{config}:"), proc.stderr
    assert fragment in lines[0]


def test_read_only_commands_refuse_a_missing_ledger_and_need_no_secrets(tmp_path: Path) -> None:
    config = write_config(tmp_path, "https://api.clari.com/v4", [forecast("f")])
    text = config.read_text().replace(f'api_key = "{API_KEY}"', 'api_key_file = "clari"')
    config.write_text(text)  # a systemd credential name; no $CREDENTIALS_DIRECTORY here
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for args in (["jobs", "list"], ["jobs", "show", "1"], ["quota", "--offline"]):
        proc = cli(*args, "--config", str(config), cwd=elsewhere, env=env)
        one_line_error(proc, config, f"ledger.url: no ledger at {tmp_path}/ledger.db")
    assert not (tmp_path / "ledger.db").exists() and list(elsewhere.iterdir()) == []

    cli("db", "upgrade", "--config", str(config), env=env, check=True)
    assert cli("jobs", "list", "--json", "--config", str(config), env=env, check=True).stdout
    quota = cli("quota", "--offline", "--json", "--config", str(config), env=env, check=True)
    assert '"clari"' in quota.stdout
    # The daemon does need the key, and says which file it could not read.
    one_line_error(
        cli("check-config", "--config", str(config), env=env),
        config,
        f"api_key_file: cannot read {tmp_path}/clari: No such file or directory",
    )


def test_run_and_check_config_on_an_output_dir_that_is_a_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, "https://api.clari.com/v4", [forecast("f")])
    (tmp_path / "results").write_text("not a directory")
    for command in (["check-config"], ["run", "--once"]):
        proc = cli(*command, "--config", str(config))
        one_line_error(proc, config, f"output.dir: {tmp_path}/results exists and is not a dir")


def test_a_busy_port_warns_check_config_and_stops_run_and_simulate(tmp_path: Path) -> None:
    config = write_config(tmp_path, "https://api.clari.com/v4", [forecast("f")])
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        config.write_text(config.read_text().replace("port = 0", f"port = {port}"))
        checked = cli("check-config", "--config", str(config))
        assert checked.returncode == 0 and "web.port: warning:" in checked.stderr
        one_line_error(
            cli("run", "--config", str(config)),
            config,
            f"web.port: cannot listen on 127.0.0.1:{port}: in use",
        )
        sim = cli("simulate", "--port", str(port))
        assert sim.returncode == 2 and "Traceback" not in sim.stderr
        assert f"simulate --host 127.0.0.1 --port {port}: cannot listen there: in use" in sim.stderr


def test_sigterm_exits_0_after_failed_jobs_and_run_once_exits_1(
    tmp_path: Path, simulator: str
) -> None:
    http_json(simulator + "/_sim/config", {"fail_rate": 1.0, "duration": 0.1})
    config = write_config(
        tmp_path, simulator, [{**forecast("f"), "max_attempts": 1}], api_key=API_KEY
    )
    assert cli("run", "--once", "--config", str(config)).returncode == 1
    daemon = start_daemon(config)
    try:
        cli("trigger", "f", "--config", str(config), check=True)
        wait_until(lambda: [j["state"] for j in jobs_json(config)] == ["FAILED"] * 2, daemon)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
    finally:
        daemon.kill()
