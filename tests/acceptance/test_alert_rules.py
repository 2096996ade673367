"""deploy/prometheus/alerts.yml: valid (`promtool check rules`), behaving as its unit tests say
(`promtool test rules`), and naming only metrics the daemon exports. promtool comes from
Debian's `prometheus` package (`make promtool`, run by `make test` as root); a missing promtool
fails these tests instead of skipping them, so CI cannot pass without checking the rules."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

RULES = Path(__file__).parents[2] / "deploy" / "prometheus"
DAEMON_METRICS = Path(__file__).parents[2] / "orchestrator" / "metrics.py"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed: `make promtool` (as root) or "
            "`apt-get install prometheus`; the alert rules cannot be checked without it"
        )
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=RULES, capture_output=True, text=True, timeout=60, check=False
    )


def test_rules_are_valid() -> None:
    proc = run("check", "rules", "alerts.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 6 rules found" in proc.stdout


def test_rules_unit_tests_pass() -> None:
    proc = run("test", "rules", "alerts.test.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rules_name_only_metrics_the_daemon_exports() -> None:
    used = set(re.findall(r"\borchestrator_[a-z_]+", (RULES / "alerts.yml").read_text()))
    exported = set(re.findall(r'"(orchestrator_[a-z_]+)"', DAEMON_METRICS.read_text()))
    assert used and used <= exported, used - exported
