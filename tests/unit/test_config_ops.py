"""Config errors all at once with 'did you mean', [daemon] log_level, [retention], [[notify]],
and schedule arithmetic that is not capped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from orchestrator.config import load_config
from orchestrator.errors import ConfigError
from orchestrator.schedule import count_fires, fire_times_between, parse_schedule

BASE = """
[ledger]
url = "sqlite+aiosqlite:///./x.db"
[providers.clari]
base_url = "http://127.0.0.1:1/clari/v4"
api_key = "k"
"""


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "c.toml"
    path.write_text(BASE + text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    return exc.value.problems


def test_every_section_error_at_once_with_did_you_mean(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """[daemon]
drain_timeot = "5s"
[retension]
results = "90d"
[[pipelines]]
name = "a"
kind = "clari.forecast_export"
schedul = "every 1h"
params = { forecastId = "x" }
[[pipelines]]
name = "b"
kind = "clari.nope"
[[notify]]
url = "ftp://x"
""",
    )
    path = tmp_path / "c.toml"
    assert found == [
        f"{path}:8: daemon.drain_timeot: Extra inputs are not permitted; "
        "did you mean 'drain_timeout'?",
        f"{path}:14: pipeline 'a': schedul: Extra inputs are not permitted; "
        "did you mean 'schedule'?",
        f"{path}:20: [[notify]] #1: url: is not an http(s) URL",
        f"{path}:9: retension: Extra inputs are not permitted; did you mean 'retention'?",
        f"{path}:18: pipeline 'b': kind: unknown kind 'clari.nope'; known: "
        + found[-1].split("known: ", 1)[1],
    ]


def test_no_suggestion_for_a_key_like_nothing(tmp_path: Path) -> None:
    (line,) = problems(tmp_path, "[web]\nzzzzqq = 1\n")
    assert line.endswith("web.zzzzqq: Extra inputs are not permitted")


def test_log_level_retention_and_notify_parse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK", "https://hooks.example/T/secret")
    path = tmp_path / "c.toml"
    path.write_text(
        BASE
        + '[daemon]\nlog_level = "debug"\n[retention]\nresults = "90d"\n'
        + '[[notify]]\nurl = "${HOOK}"\non = ["failed"]\n'
    )
    cfg = load_config(path)
    assert cfg.daemon.log_level == "DEBUG"
    assert cfg.retention.results == 90 * 86400 and cfg.retention.jobs is None
    assert cfg.notify[0].url.get_secret_value() == "https://hooks.example/T/secret"
    assert "secret" not in repr(cfg.notify[0])
    monkeypatch.delenv("HOOK")
    with pytest.raises(ConfigError, match=r"notify.*\$\{HOOK\} is not set"):
        load_config(path)
    assert load_config(path, secrets=False).notify[0].on == ["failed"]  # read-only commands


def test_interval_fires_are_counted_not_capped() -> None:
    now = datetime(2026, 12, 1, 21, 45, 30, tzinfo=UTC)
    month = timedelta(days=30)
    assert count_fires(parse_schedule("every 1s"), now, now + month) == 2_592_000
    assert len(fire_times_between(parse_schedule("every 1s"), now, now + month)) == 100_000
    assert count_fires(parse_schedule("every 15m"), now, now + timedelta(hours=1)) == 4
    hourly_cron = parse_schedule("0 * * * *")
    assert count_fires(hourly_cron, now, now + timedelta(days=1)) == 24
