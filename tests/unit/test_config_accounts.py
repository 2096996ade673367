"""Several accounts of one provider: which provider an account is of, and the config errors when
that is unclear or a pipeline names an account of another provider."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import PROVIDER_TYPES, account_type, load_config
from orchestrator.errors import ConfigError
from orchestrator.providers import KINDS, PROVIDERS, adapter_factory, kinds_of

HEAD = """\
[ledger]
url = "sqlite+aiosqlite:///{tmp}/l.db"
"""

FORECAST = 'params = { forecastId = "fc_1", timePeriod = "2026_Q4", exportFormat = "CSV" }'


def write(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "orchestrator.toml"
    p.write_text(HEAD.format(tmp=tmp_path) + body)
    return p


def errors_of(path: Path, *, secrets: bool = True) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, secrets=secrets)
    return info.value.problems


def line_of(path: Path, text: str) -> int:
    """The 1-based line of the (only) line of `path` holding `text`."""
    (n,) = [i for i, ln in enumerate(path.read_text().splitlines(), 1) if text in ln]
    return n


@pytest.mark.parametrize(
    ("name", "explicit", "expected"),
    [
        ("clari", None, "clari"),
        ("claro", None, "claro"),
        ("claravine", None, "claravine"),
        ("claribi", None, "claribi"),
        ("clayva", None, "clayva"),
        ("clari-emea", None, "clari"),
        ("claribi-team-b", None, "claribi"),  # the prefix is before the first '-' only
        ("emea_org", "clari", "clari"),
        ("claro-eu", "clari", "clari"),  # an explicit type wins over the name
        ("clari", "claro", "claro"),
        ("emea_org", None, None),
        ("clari_emea", None, None),  # '_' is no separator
        ("clarity-x", None, None),
        ("-clari", None, None),
        ("Clari-emea", None, None),  # provider names are lower case
        ("emea_org", "salesforce", None),
        ("emea_org", "", None),
    ],
)
def test_account_type(name: str, explicit: str | None, expected: str | None) -> None:
    assert account_type(name, explicit) == expected


def test_every_provider_type_has_an_adapter_and_kinds() -> None:
    assert set(PROVIDER_TYPES) == set(PROVIDERS)
    assert {spec.provider for spec in KINDS.values()} == set(PROVIDER_TYPES)
    assert kinds_of("clari", budgeted=False) == ["clari.ingest"]
    assert "clari.ingest" not in kinds_of("clari", budgeted=True)
    assert sorted(kinds_of("clari")) == sorted(k for k in KINDS if k.startswith("clari."))


TWO_ACCOUNTS = """
[providers.clari-emea]
base_url = "https://emea.example.com/v4"
api_key = "k1"
concurrency = 1

[providers.emea_org]
type = "clari"
base_url = "https://org.example.com/v4"
api_key = "k2"
monthly_quota = 5

[providers.vine]
type = "claravine"
base_url = "https://vine.example.com/v1"
api_key = "k3"
api_secret = "s3"

[[pipelines]]
name = "a"
kind = "clari.forecast_export"
account = "clari-emea"
{forecast}

[[pipelines]]
name = "b"
kind = "clari.forecast_export"
account = "emea_org"
{forecast}
"""


def test_two_accounts_of_one_provider_load(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, TWO_ACCOUNTS.format(forecast=FORECAST)))
    assert cfg.account_type("clari-emea") == "clari"
    assert cfg.account_type("emea_org") == "clari"
    assert cfg.account_type("vine") == "claravine"
    assert cfg.account_type("clari") is None  # not configured
    assert [p.provider for p in cfg.pipelines] == ["clari-emea", "emea_org"]
    assert cfg.providers["emea_org"].type == "clari"
    assert cfg.providers["clari-emea"].type is None  # from the name
    for name in ("clari-emea", "emea_org"):
        assert adapter_factory(cfg.providers[name]) is PROVIDERS["clari"]
    assert adapter_factory(cfg.providers["vine"]) is PROVIDERS["claravine"]


def test_unknown_type_names_file_line_and_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[providers.emea_org]\ntype = "salesforce"\nbase_url = "https://x.example.com"\n'
        'api_key = "k"\n',
    )
    (problem,) = errors_of(path)
    assert problem.startswith(f"{path}:{line_of(path, 'salesforce')}: ")
    assert "provider 'emea_org': type" in problem
    assert "unknown provider type 'salesforce'" in problem
    assert "known: clari, claro, claravine, claribi, clayva" in problem


def test_type_must_be_a_string(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[providers.emea_org]\ntype = 3\nbase_url = "https://x.example.com"\napi_key = "k"\n',
    )
    (problem,) = errors_of(path)
    assert problem.startswith(f"{path}:{line_of(path, 'type = 3')}: provider 'emea_org': type")


@pytest.mark.parametrize("name", ["emea_org", "clari_emea", "clarity-x", "Clari"])
def test_a_name_that_tells_no_provider_needs_a_type(tmp_path: Path, name: str) -> None:
    path = write(
        tmp_path, f'[providers.{name}]\nbase_url = "https://x.example.com"\napi_key = "k"\n'
    )
    for secrets in (True, False):  # read-only commands refuse it too
        (problem,) = errors_of(path, secrets=secrets)
        assert problem.startswith(f"{path}:{line_of(path, f'[providers.{name}]')}: ")
        assert f"provider {name!r}: type: cannot tell which provider" in problem
        assert 'set type = "<provider>"' in problem


def test_pipeline_account_of_another_provider(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[providers.claro-eu]\nbase_url = "https://x.example.com"\napi_key = "k"\n'
        '[[pipelines]]\nname = "fc"\nkind = "clari.forecast_export"\naccount = "claro-eu"\n'
        f"{FORECAST}\n",
    )
    (problem,) = errors_of(path)
    assert problem.startswith(f"{path}:{line_of(path, 'account =')}: pipeline 'fc': account: ")
    assert "account 'claro-eu' is a claro account" in problem
    assert "kind 'clari.forecast_export' needs a clari account" in problem


def test_pipeline_account_typed_otherwise(tmp_path: Path) -> None:
    """An unprefixed account's explicit type is what counts."""
    path = write(
        tmp_path,
        '[providers.emea_org]\ntype = "claribi"\nbase_url = "https://x.example.com"\n'
        'api_key = "k"\n'
        '[[pipelines]]\nname = "fc"\nkind = "clari.forecast_export"\naccount = "emea_org"\n'
        f"{FORECAST}\n",
    )
    (problem,) = errors_of(path)
    assert problem.startswith(f"{path}:{line_of(path, 'account =')}: ")
    assert "account 'emea_org' is a claribi account" in problem


def test_pipeline_account_not_configured(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[providers.clari]\nbase_url = "https://x.example.com"\napi_key = "k"\n'
        '[[pipelines]]\nname = "fc"\nkind = "clari.forecast_export"\naccount = "emea_org"\n'
        f"{FORECAST}\n",
    )
    (problem,) = errors_of(path)
    assert problem.startswith(f"{path}:{line_of(path, 'account =')}: pipeline 'fc': account: ")
    assert 'needs a [providers.emea_org] section with type = "clari"' in problem


def test_default_account_of_another_type(tmp_path: Path) -> None:
    """Without `account` a pipeline uses the account named like its kind's provider; one typed
    as another provider is refused at the kind."""
    path = write(
        tmp_path,
        '[providers.clari]\ntype = "claro"\nbase_url = "https://x.example.com"\napi_key = "k"\n'
        f'[[pipelines]]\nname = "fc"\nkind = "clari.forecast_export"\n{FORECAST}\n',
    )
    (problem,) = errors_of(path)
    assert problem.startswith(f"{path}:{line_of(path, 'kind =')}: pipeline 'fc': kind: ")
    assert "account 'clari' is a claro account" in problem


def test_the_single_account_form_still_works(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[providers.clari]\nbase_url = "https://x.example.com"\napi_key = "k"\n'
        f'[[pipelines]]\nname = "fc"\nkind = "clari.forecast_export"\n{FORECAST}\n',
    )
    cfg = load_config(path)
    assert cfg.pipelines[0].provider == "clari"
    assert cfg.account_type("clari") == "clari"


@pytest.mark.parametrize("name", ["claravine-eu", "vine"])
def test_claravine_secret_is_required_by_type(tmp_path: Path, name: str) -> None:
    typed = "" if name.startswith("claravine") else 'type = "claravine"\n'
    path = write(
        tmp_path,
        f'[providers.{name}]\n{typed}base_url = "https://x.example.com"\napi_key = "k"\n',
    )
    (problem,) = errors_of(path)
    assert f"provider {name!r}: api_secret: Claravine needs an API key and an API secret" in problem


def test_a_claravine_named_account_of_another_type_needs_no_secret(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[providers.claravine-old]\ntype = "clayva"\nbase_url = "https://x.example.com"\n'
        'api_key = "k"\n',
    )
    assert load_config(path).account_type("claravine-old") == "clayva"


@pytest.mark.parametrize(
    ("header", "shown"),
    [
        ('"clari emea"', "clari emea"),
        ('"clari-\\u001b[31mred"', "clari-\x1b[31mred"),
        ("clari-" + "x" * 60, "clari-" + "x" * 60),
    ],
)
def test_account_names_the_ledger_can_keep(tmp_path: Path, header: str, shown: str) -> None:
    path = write(
        tmp_path, f'[providers.{header}]\nbase_url = "https://x.example.com"\napi_key = "k"\n'
    )
    problems = errors_of(path)
    assert any(
        f"provider {shown!r}: an account name is 1 to 64 letters, digits" in p for p in problems
    ), problems


def test_a_64_character_account_name_is_fine(tmp_path: Path) -> None:
    name = "clari-" + "x" * 58
    path = write(
        tmp_path, f'[providers.{name}]\nbase_url = "https://x.example.com"\napi_key = "k"\n'
    )
    assert load_config(path).account_type(name) == "clari"


def test_the_readme_example_loads(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Several accounts of one provider", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    path = write(tmp_path, example)
    cfg = load_config(path, secrets=False)  # its keys come from the environment and files
    assert {name: cfg.account_type(name) for name in cfg.providers} == {
        "clari": "clari",
        "clari-emea": "clari",
        "emea_org": "clari",
    }
    (p,) = cfg.pipelines
    assert p.provider == "emea_org"
    assert cfg.providers["emea_org"].monthly_quota == 900


def test_a_pipeline_account_that_is_no_account_name(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[providers.clari]\nbase_url = "https://x.example.com"\napi_key = "k"\n'
        '[[pipelines]]\nname = "fc"\nkind = "clari.forecast_export"\n'
        f'account = "clari\\u001b[2J"\n{FORECAST}\n',
    )
    (problem,) = errors_of(path)
    assert problem.startswith(f"{path}:{line_of(path, 'account =')}: pipeline 'fc': account: ")
    assert "\x1b" not in problem
