"""Several accounts of one provider as the CLI shows them: `check-config` judges each account's
type, `quota` has a row per account with its type."""

from __future__ import annotations

import json
from pathlib import Path

from tests.acceptance.helpers import cli

FORECAST = 'params = { forecastId = "fc_1", timePeriod = "2026_Q4", exportFormat = "CSV" }'


def write(tmp_path: Path, pipelines: str) -> Path:
    path = tmp_path / "orchestrator.toml"
    path.write_text(
        f"""\
[ledger]
url = "sqlite+aiosqlite:///{tmp_path}/ledger.db"

[providers.clari-emea]
base_url = "http://127.0.0.1:9/v4"
api_key = "k1"
monthly_quota = 100
quota_reserve = 10

[providers.emea_org]
type = "clari"
base_url = "http://127.0.0.1:9/v4"
api_key = "k2"
concurrency = 2

{pipelines}"""
    )
    return path


def pipeline(name: str, account: str, schedule: str) -> str:
    return (
        f'[[pipelines]]\nname = "{name}"\nkind = "clari.forecast_export"\n'
        f'account = "{account}"\nschedule = "{schedule}"\n{FORECAST}\n'
    )


def test_quota_has_a_row_per_account_with_its_type(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        pipeline("daily", "clari-emea", "0 6 * * *") + pipeline("hourly", "emea_org", "every 1h"),
    )
    assert cli("check-config", "--config", str(config)).returncode == 0
    assert cli("db", "upgrade", "--config", str(config)).returncode == 0
    report = json.loads(cli("quota", "--json", "--offline", "--config", str(config)).stdout)
    assert {name: r["type"] for name, r in report.items()} == {
        "clari-emea": "clari",
        "emea_org": "clari",
    }
    assert report["clari-emea"]["monthly_quota"] == 100
    assert report["clari-emea"]["quota_reserve"] == 10
    assert report["emea_org"]["monthly_quota"] is None
    assert report["emea_org"]["concurrency_limit"] == 2
    assert 29 <= report["clari-emea"]["projected_30d"] <= 31  # its own schedule only
    assert 719 <= report["emea_org"]["projected_30d"] <= 721

    table = cli("quota", "--offline", "--config", str(config))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    header = next(ln for ln in lines if "account" in ln)
    assert header.index("account") < header.index("type") < header.index("limit")
    rows = {ln.split("│")[1].strip(): ln.split("│")[2].strip() for ln in lines if "emea" in ln}
    assert rows == {"clari-emea": "clari", "emea_org": "clari"}


def test_a_pipeline_naming_an_account_of_another_provider_is_refused(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        '[providers.claro-eu]\nbase_url = "http://127.0.0.1:9/api/v2"\napi_key = "k3"\n\n'
        + pipeline("daily", "claro-eu", "0 6 * * *"),
    )
    proc = cli("check-config", "--config", str(config))
    assert proc.returncode == 2
    line = next(
        n for n, text in enumerate(config.read_text().splitlines(), 1) if "account =" in text
    )
    assert (
        f"{config}:{line}: pipeline 'daily': account: account 'claro-eu' is a claro account; "
        "kind 'clari.forecast_export' needs a clari account"
    ) in proc.stderr
