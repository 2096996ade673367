"""`check-config --online` against the simulator process: every provider's cheapest call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.acceptance.helpers import cli
from tests.conftest import API_KEY, API_SECRET, CLARIBI_KEY, PARTNER_KEY, write_config

pytestmark = pytest.mark.slow


def providers(simulator: str, claribi_key: str) -> dict[str, dict[str, object]]:
    root = simulator.removesuffix("/clari/v4")
    return {
        "claro": {"base_url": f"{root}/claro/api/v2"},
        "claravine": {"base_url": f"{root}/claravine/v1", "api_secret": API_SECRET},
        "claribi": {"base_url": f"{root}/claribi/api/v1", "api_key": claribi_key},
        "clayva": {"base_url": f"{root}/clayva/v1"},
    }


def test_online_check_reports_each_provider(tmp_path: Path, simulator: str) -> None:
    config = write_config(
        tmp_path,
        simulator,
        [],
        provider={"partner_key": PARTNER_KEY},
        providers=providers(simulator, CLARIBI_KEY),
    )
    out = cli("check-config", "--online", "--json", "--config", str(config))
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    online = report["online"]
    assert report["ok"] is True
    assert set(online) == {"clari", "claro", "claravine", "claribi", "clayva"}
    assert online["clari"]["monthly_quota"] > 0
    assert online["clari"]["ingest"] == "apikey and partnerkey accepted"
    assert online["claribi"]["tier"] == "professional"
    assert online["claribi"]["credits"]["remaining"] >= 0
    assert online["claro"]["datasets"] >= 1
    assert online["claravine"]["templates"] == 1
    assert online["clayva"]["workspaces"] == 1
    text = cli("check-config", "--online", "--config", str(config))
    assert text.returncode == 0 and "claribi: ok (tier=professional" in text.stdout


def test_online_check_fails_with_exit_2_and_no_secret(tmp_path: Path, simulator: str) -> None:
    config = write_config(
        tmp_path, simulator, [], providers=providers(simulator, "not-a-claribi-key-123")
    )
    out = cli("check-config", "--online", "--config", str(config))
    assert out.returncode == 2
    assert "claribi: FAILED: claribi: HTTP 401" in out.stderr
    assert "claro: ok" in out.stdout
    assert "not-a-claribi-key-123" not in out.stdout + out.stderr
    assert API_KEY not in out.stdout + out.stderr
