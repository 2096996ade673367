"""Deployment files: the systemd unit verified and rated by systemd-analyze, the container's
entrypoint and healthcheck commands run for real, the Dockerfile checked for what we promise.
(The image itself is built and run by deploy/test-image.sh: `make image`, and .ci/run.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.acceptance.helpers import cli, start_daemon, wait_until
from tests.conftest import API_KEY, forecast, free_port, write_config

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "orchestrator.service"
ANALYZE = shutil.which("systemd-analyze")


def _unit_for_here(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's orchestrator (verify checks it)."""
    exe = Path(sys.executable).parent / "orchestrator"
    text = UNIT.read_text().replace("/opt/orchestrator/.venv/bin/orchestrator", str(exe))
    path = tmp_path / "orchestrator.service"
    path.write_text(text)
    return path


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
def test_unit_verifies_and_its_exposure_is_at_most_2(tmp_path: Path) -> None:
    unit = _unit_for_here(tmp_path)
    verify = subprocess.run(
        [str(ANALYZE), "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    sec = subprocess.run(
        [str(ANALYZE), "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", sec.stdout)
    assert m, sec.stdout[-2000:] + sec.stderr
    assert float(m.group(1)) <= 2.0


def test_unit_promises() -> None:
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "DynamicUser=yes",
        "StateDirectory=orchestrator",
        "WatchdogSec=",
        "TimeoutStopSec=60s",
        "MemoryMax=1G",
        "TasksMax=128",
    ):
        assert line in text
    # Every provider's credential, each under the name the config's *_file refers to.
    credentials = set(re.findall(r"^LoadCredential=([\w-]+):", text, re.MULTILINE))
    assert credentials == {
        "clari",
        "clari-partner",
        "claro",
        "claravine",
        "claravine-secret",
        "claribi",
        "clayva",
    }


def test_dockerfile_promises() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) == 2  # multi-stage
    assert "-slim" in text
    assert re.search(r"^USER 10001", text, re.MULTILINE)  # non-root, fixed UID
    assert "PYTHONUNBUFFERED=1" in text
    assert 'CMD ["orchestrator", "healthcheck"]' in text
    assert 'VOLUME ["/var/lib/orchestrator"]' in text
    assert "ADD " not in text  # COPY only: nothing fetched at build time
    assert not re.search(r"^# *syntax=", text, re.MULTILINE)  # its frontend comes from Docker Hub
    assert "pip install -e" not in text and "--editable" not in text  # installs the wheel
    compose = (ROOT / "deploy" / "compose.yaml").read_text()
    assert "init: true" in compose and "stop_grace_period: 60s" in compose
    assert "mem_limit: 1g" in compose and "pids_limit: 128" in compose
    # The config as a long-form bind: a missing file fails `up` instead of becoming a directory.
    assert re.search(r"type: bind\s.*\n\s+source: ./orchestrator.toml", compose)


def test_secrets_and_local_config_stay_out_of_git_and_the_build_context() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "deploy/secrets", "deploy/orchestrator.toml"):
        assert entry in ignored
    git = subprocess.run(
        ["git", "check-ignore", "deploy/secrets/clari", "deploy/orchestrator.toml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert git.stdout.split() == ["deploy/secrets/clari", "deploy/orchestrator.toml"]


def test_entrypoint_and_healthcheck_commands(tmp_path: Path) -> None:
    """What the container runs: `orchestrator run` (ENTRYPOINT + CMD) and, beside it,
    `orchestrator healthcheck` — unhealthy before the daemon listens, healthy after."""
    port = free_port()
    config = write_config(tmp_path, "http://127.0.0.1:9/clari/v4", [forecast("f")], api_key=API_KEY)
    config.write_text(config.read_text().replace("port = 0", f"port = {port}"))
    assert cli("healthcheck", "--config", str(config), "--timeout", "1").returncode == 1
    daemon = start_daemon(config)
    try:
        wait_until(
            lambda: cli("healthcheck", "--config", str(config), "--timeout", "1").returncode == 0,
            daemon,
            timeout=20,
        )
    finally:
        daemon.terminate()
        daemon.wait(30)
    assert daemon.returncode == 0
