"""Relative paths point from the config file, not the working directory; secrets are read only
by the commands that need them, and really opened when they are."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import load_config
from orchestrator.errors import ConfigError

CONFIG = """\
[ledger]
url = "sqlite+aiosqlite:///state/ledger.db"
[output]
dir = "results"
[providers.clari]
base_url = "https://api.clari.com/v4"
{key}
[providers.clayva]
base_url = "https://api.clayva.com/v1"
api_key = "${{TEST_UNSET_CLAYVA_KEY}}"
[[pipelines]]
name = "events"
kind = "clayva.events_import"
params = {{ source = "inbox/*.jsonl" }}
[[pipelines]]
name = "forecast"
kind = "clari.forecast_export"
params = {{ forecastId = "f", timePeriod = "2026_Q4", exportFormat = "CSV" }}
"""


def write(directory: Path, key: str = 'api_key_file = "keys/clari"') -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "orchestrator.toml"
    path.write_text(CONFIG.format(key=key))
    return path


def test_relative_paths_resolve_against_the_config_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = write(tmp_path / "etc")
    monkeypatch.chdir(tmp_path)  # elsewhere, and the config named relative to here
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    cfg = load_config(Path("etc/orchestrator.toml"), secrets=False)
    etc = conf.parent.resolve()
    assert cfg.ledger.url == f"sqlite+aiosqlite:///{etc}/state/ledger.db"
    assert cfg.output.dir == etc / "results"
    assert cfg.pipeline("events").params["source"] == f"{etc}/inbox/*.jsonl"
    assert cfg.providers["clari"].api_key_file == etc / "keys/clari"


@pytest.mark.parametrize(
    "url",
    [
        "sqlite+aiosqlite:////var/lib/orchestrator/ledger.db",  # four slashes: absolute
        "sqlite+aiosqlite:///:memory:",
        "postgresql+asyncpg://u@db.internal/orchestrator",
    ],
)
def test_absolute_and_non_file_urls_are_left_alone(tmp_path: Path, url: str) -> None:
    conf = write(tmp_path, key='api_key = "k"')
    conf.write_text(conf.read_text().replace("sqlite+aiosqlite:///state/ledger.db", url))
    assert load_config(conf, secrets=False).ledger.url == url


def test_read_only_commands_need_no_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An admin shell: no $CREDENTIALS_DIRECTORY, no key file, no key in the environment."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("TEST_UNSET_CLAYVA_KEY", raising=False)
    conf = write(tmp_path, key='api_key_file = "clari"')
    cfg = load_config(conf, secrets=False)
    assert [p.name for p in cfg.pipelines] == ["events", "forecast"]
    with pytest.raises(ConfigError) as info:
        load_config(conf)  # the daemon does need them
    problems = "\n".join(info.value.problems)
    assert f"cannot read {tmp_path.resolve()}/clari: No such file or directory" in problems
    assert "${TEST_UNSET_CLAYVA_KEY} is not set" in problems


def test_secret_files_are_really_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_UNSET_CLAYVA_KEY", "k")
    conf = write(tmp_path, key='api_key_file = "keys/clari"')
    (tmp_path / "keys" / "clari").mkdir(parents=True)  # exists, is not a readable file
    with pytest.raises(ConfigError) as info:
        load_config(conf)
    (problem,) = info.value.problems
    assert problem.startswith(f"{conf}:7: provider 'clari': api_key_file: cannot read ")
    assert problem.endswith(": Is a directory")


def test_every_secret_key_may_come_from_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    for name, value in (("clari", "key\n"), ("clari-partner", "partner\n"), ("vine", "s3cret")):
        (creds / name).write_text(value)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    monkeypatch.setenv("TEST_UNSET_CLAYVA_KEY", "k")
    conf = write(
        tmp_path / "etc",
        key='api_key_file = "clari"\npartner_key_file = "clari-partner"\n'
        "[providers.claravine]\n"
        'base_url = "https://x.claravine.com/v1"\napi_key = "k"\napi_secret_file = "vine"',
    )
    cfg = load_config(conf)
    clari, vine = cfg.providers["clari"], cfg.providers["claravine"]
    assert clari.secret() == "key"
    assert clari.partner_key is not None and clari.partner_key.get_secret_value() == "partner"
    assert vine.api_secret is not None and vine.api_secret.get_secret_value() == "s3cret"
    assert {"key", "partner", "s3cret"} <= set(cfg.secrets())  # all redacted in logs


def test_a_secret_and_its_file_together_are_refused(tmp_path: Path) -> None:
    conf = write(tmp_path, key='api_key = "k"\npartner_key = "p"\npartner_key_file = "p"')
    with pytest.raises(ConfigError, match="set partner_key or partner_key_file, not both"):
        load_config(conf, secrets=False)
