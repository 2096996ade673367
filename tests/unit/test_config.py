from pathlib import Path

import pytest

from orchestrator.config import load_config, parse_duration
from orchestrator.errors import ConfigError

GOOD = """\
[ledger]
url = "sqlite+aiosqlite:///{tmp}/l.db"

[output]
dir = "{tmp}/out"

[providers.clari]
base_url = "https://api.clari.com/v4"
api_key = "${{TEST_CLARI_KEY}}"
concurrency = 2

[[pipelines]]
name = "weekly-forecast"
kind = "clari.forecast_export"
schedule = "0 6 * * MON"
params = {{ forecastId = "forecast_x", timePeriod = "{{{{ quarter }}}}", exportFormat = "CSV" }}

[[pipelines]]
name = "activity"
kind = "clari.activity_export"
schedule = "every 1d"
params = {{ startDate = "{{{{ day-1 | datetime }}}}", endDate = "{{{{ day | datetime }}}}" }}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "orchestrator.toml"
    p.write_text(text)
    return p


def errors_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def test_good_config_loads_and_resolves_the_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_CLARI_KEY", "k-123")
    cfg = load_config(write(tmp_path, GOOD.format(tmp=tmp_path)))
    assert cfg.providers["clari"].secret() == "k-123"
    assert "k-123" not in repr(cfg)
    assert [p.name for p in cfg.pipelines] == ["weekly-forecast", "activity"]


def test_api_key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "key").write_text("from-file\n")
    text = GOOD.format(tmp=tmp_path).replace(
        'api_key = "${TEST_CLARI_KEY}"', f'api_key_file = "{tmp_path}/key"'
    )
    assert load_config(write(tmp_path, text)).providers["clari"].secret() == "from-file"


def test_credentials_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "clari").write_text("cred\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    text = GOOD.format(tmp=tmp_path).replace(
        'api_key = "${TEST_CLARI_KEY}"', 'api_key_file = "clari"'
    )
    assert load_config(write(tmp_path, text)).providers["clari"].secret() == "cred"


@pytest.mark.parametrize(
    ("old", "new", "line", "fragment"),
    [
        ('timePeriod = "{{ quarter }}"', 'timePeriod = "2026-Q4"', 16, "timePeriod"),
        ('exportFormat = "CSV"', 'exportFormat = "XML"', 16, "exportFormat"),
        (
            'exportFormat = "CSV"',
            'typesToExport = ["crm_total"]',
            16,
            "not supported by the export API",
        ),
        ('kind = "clari.activity_export"', 'kind = "clari.nope"', 20, "unknown kind"),
        ('schedule = "every 1d"', 'schedule = "every day"', 21, "schedule"),
        ('schedule = "0 6 * * MON"', 'schedule = "0 25 * * MON"', 15, "schedule"),
        ('name = "activity"', 'name = "weekly-forecast"', 19, "duplicate pipeline name"),
        ("concurrency = 2", "concurrency = 0", 10, "concurrency"),
        ('startDate = "{{ day-1 | datetime }}"', 'startDate = "2026-11-01"', 22, "ISO 8601"),
        (
            'startDate = "{{ day-1 | datetime }}"',
            'startDate = "{{ yesterday }}"',
            22,
            "unknown date",
        ),
        ("concurrency = 2", "concurency = 2", 10, "Extra inputs"),
    ],
)
def test_bad_values_name_file_line_pipeline_and_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old: str, new: str, line: int, fragment: str
) -> None:
    monkeypatch.setenv("TEST_CLARI_KEY", "k")
    text = GOOD.format(tmp=tmp_path)
    assert old in text
    path = write(tmp_path, text.replace(old, new, 1))
    problems = errors_of(path)
    assert any(p.startswith(f"{path}:{line}: ") and fragment in p for p in problems), problems


def test_missing_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_CLARI_KEY", raising=False)
    path = write(tmp_path, GOOD.format(tmp=tmp_path))
    (problem,) = errors_of(path)
    assert problem.startswith(f"{path}:9: provider 'clari'")
    assert "$" + "{TEST_CLARI_KEY} is not set" in problem


def test_missing_provider_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = GOOD.format(tmp=tmp_path)
    text = text.replace('[providers.clari]\nbase_url = "https://api.clari.com/v4"\n', "")
    text = text.replace('api_key = "${TEST_CLARI_KEY}"\nconcurrency = 2\n', "")
    problems = errors_of(write(tmp_path, text))
    assert any("needs a [providers.clari] section" in p for p in problems)


def test_toml_syntax_error_has_a_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[ledger]\nurl = \n")
    (problem,) = errors_of(path)
    assert problem.startswith(f"{path}:2: TOML syntax error")


def test_unreadable_file(tmp_path: Path) -> None:
    (problem,) = errors_of(tmp_path / "missing.toml")
    assert "cannot read config file" in problem


def test_durations() -> None:
    assert parse_duration("1h30m") == 5400
    assert parse_duration("250ms") == 0.25
    assert parse_duration(5) == 5.0
    with pytest.raises(ValueError, match="duration"):
        parse_duration("soon")


@pytest.mark.parametrize("name", ["example.toml", "demo.toml"])
def test_shipped_configs_are_valid(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    names = ("CLARI", "CLARO", "CLARAVINE", "CLARIBI", "CLAYVA")
    for var in [f"{n}_API_KEY" for n in names] + ["CLARAVINE_API_SECRET"]:
        monkeypatch.setenv(var, "k")
    cfg = load_config(Path(__file__).parents[2] / "config" / name)
    assert cfg.pipelines
