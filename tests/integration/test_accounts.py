"""Several accounts of one provider (README "Several accounts of one provider"), for every job
kind, over real HTTP: one account named with the provider's prefix (`clari-emea`), one named
otherwise with an explicit `type` (`emea_org`), each pointing at a simulator of its own that
accepts only its own credentials. Each account's jobs reach its own server only, and each keeps
its own limits."""

from __future__ import annotations

import asyncio
import csv
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.config import Config, load_config
from orchestrator.domain import Job, JobState
from orchestrator.engine.daemon import Daemon
from orchestrator.ledger.store import Ledger, utcnow
from orchestrator.providers import KINDS
from orchestrator.simulator.claravine import CAMPAIGN_FIELDS, ClaravineSimConfig
from orchestrator.simulator.clari import ClariSimConfig
from orchestrator.simulator.clari_ingest import IngestSimConfig
from orchestrator.simulator.claribi import ClariBISimConfig
from orchestrator.simulator.claro import ClaroDataset, ClaroSimConfig
from orchestrator.simulator.clayva import ClayvaSimConfig
from orchestrator.simulator.server import Simulators, SimulatorServer
from tests.conftest import toml_value
from tests.integration.helpers import all_jobs, run_once, start, wait_for_jobs

pytestmark = pytest.mark.timeout(120)

PREFIXED, TYPED = "emea", "org"  # the two accounts: <provider>-emea and emea_org (type = …)
CLARAVINE_DATASET = "4f1c2a9e-0000-4000-8000-000000000001"
CLARIBI_TEMPLATE = "550e8400-e29b-41d4-a716-446655440010"
CLARIBI_SOURCE = "123e4567-e89b-12d3-a456-426614174000"
DASHBOARDS = ["550e8400-e29b-41d4-a716-446655440020", "550e8400-e29b-41d4-a716-446655440021"]


@dataclass(frozen=True, kw_only=True)
class Server:
    """One account's own simulators, and the credentials only they accept."""

    tag: str
    http: SimulatorServer

    @property
    def key(self) -> str:
        return f"key-{self.tag}-Wm4qZ8"

    @property
    def secret(self) -> str:
        return f"secret-{self.tag}-Jt5vN1"

    @property
    def partner(self) -> str:
        return f"partner-{self.tag}-Hc2xB7"

    @property
    def bi_key(self) -> str:
        return f"claribi_{self.tag}-Pq9sK3"

    @property
    def sims(self) -> Simulators:
        return self.http.sims


async def serve(tag: str) -> Server:
    s = Server(tag=tag, http=SimulatorServer())
    s.http.sims = Simulators.create(
        clari=ClariSimConfig(api_key=s.key, duration=0.2, queue_delay=0.05),
        claro=ClaroSimConfig(
            api_key=s.key,
            datasets=[ClaroDataset(id=f"ds_{tag}", name=f"Dataset {tag}", rows=30)],
        ),
        claravine=ClaravineSimConfig(api_key=s.key, api_secret=s.secret, processing_time=0.05),
        claribi=ClariBISimConfig(api_key=s.bi_key, generation_seconds=0.05),
        clayva=ClayvaSimConfig(api_key=s.key),
        clari_ingest=IngestSimConfig(api_key=s.key, partner_key=s.partner),
    )
    await s.http.start()
    return s


@pytest.fixture
async def servers() -> AsyncIterator[dict[str, Server]]:
    """The simulators of each account: one HTTP server each, on a port of its own."""
    made: dict[str, Server] = {}
    try:
        for tag in (PREFIXED, TYPED):
            made[tag] = await serve(tag)
        yield made
    finally:
        for s in made.values():
            await s.http.stop()


def account_name(provider: str, tag: str) -> str:
    return f"{provider}-emea" if tag == PREFIXED else "emea_org"


def account(provider: str, server: Server, **extra: Any) -> dict[str, Any]:
    """The `[providers.<account>]` keys of one account at `server`."""
    prov: dict[str, Any] = {
        "base_url": server.http.base_url(provider),
        "api_key": server.bi_key if provider == "claribi" else server.key,
        "retry_base": "0.05s",
        "poll": {"initial": "0.05s", "max_interval": "0.3s", "min_interval": "0.02s"},
    }
    if server.tag == TYPED:
        prov = {"type": provider, **prov}
    if provider == "claravine":
        prov["api_secret"] = server.secret
    if provider == "clari":
        prov["partner_key"] = server.partner
    if provider in ("claro", "clayva"):
        prov["requests_per_minute"] = 6000
    return {**prov, **extra}


def write_config(
    tmp_path: Path, providers: dict[str, dict[str, Any]], pipelines: list[dict[str, Any]]
) -> Config:
    """A config with exactly these accounts: no `[providers.<provider>]` to fall back on."""
    lines = [
        "[ledger]",
        f'url = "sqlite+aiosqlite:///{tmp_path}/ledger.db"',
        "[output]",
        f'dir = "{tmp_path}/results"',
        "[web]",
        "port = 0",
        "[daemon]",
        'retry_base = "0.1s"',
        'retry_cap = "1s"',
        'claim_interval = "0.1s"',
    ]
    for name, keys in providers.items():
        lines.append(f"[providers.{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in keys.items()]
    for p in pipelines:
        lines.append("[[pipelines]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in p.items()]
    path = tmp_path / "orchestrator.toml"
    path.write_text("\n".join(lines) + "\n")
    return load_config(path)


# --- each family's pipelines for one account, and what its server received ----------------------


def write_lines(path: Path, rows: list[dict[str, Any]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def clari_exports(tmp_path: Path, tag: str, copies: int) -> list[dict[str, Any]]:
    out = []
    for n in range(copies):
        out += [
            {
                "name": f"forecast-{tag}-{n}",
                "kind": "clari.forecast_export",
                "params": {"forecastId": "fc_1", "timePeriod": "2026_Q4", "exportFormat": "CSV"},
            },
            {
                "name": f"activity-{tag}-{n}",
                "kind": "clari.activity_export",
                "params": {
                    "activityTypes": ["MEETING"],
                    "startDate": "{{ day-1 | datetime }}",
                    "endDate": "{{ day | datetime }}",
                },
            },
            {
                "name": f"audit-{tag}-{n}",
                "kind": "clari.audit_export",
                "params": {"dateFrom": "{{ week_start-1 }}", "sessionType": "WEB"},
            },
        ]
    return out


def clari_ingests(tmp_path: Path, tag: str, copies: int) -> list[dict[str, Any]]:
    out = []
    for n in range(copies):
        rows = [
            {
                "sourceEntity": "health",
                "id": f"{tag}-{n}-{i:04d}",
                "createdAt": 1_700_000_000_000,
                "updatedAt": 1_700_000_000_000 + i,
                "healthScore": i,
            }
            for i in range(20)
        ]
        source = write_lines(tmp_path / "in" / f"ingest-{tag}-{n}" / "a.jsonl", rows)
        out.append(
            {
                "name": f"ingest-{tag}-{n}",
                "kind": "clari.ingest",
                "params": {"entity": "account", "source": source},
            }
        )
    return out


def claro_exports(tmp_path: Path, tag: str, copies: int) -> list[dict[str, Any]]:
    return [
        {
            "name": f"dataset-{tag}-{n}",
            "kind": "claro.dataset_export",
            "params": {"datasetId": f"ds_{tag}"},  # only this account's server has it
        }
        for n in range(copies)
    ]


def claravine_jobs(tmp_path: Path, tag: str, copies: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for n in range(copies):
        src = tmp_path / "in" / f"vine-{tag}-{n}" / "campaigns.csv"
        src.parent.mkdir(parents=True)
        with src.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(CAMPAIGN_FIELDS)
            w.writerows(
                [f"Campaign {tag} {n} {i}", f"S{i}", "Adults", "Brand", "Marketing", "2026-11"]
                for i in range(5)
            )
        out += [
            {
                "name": f"submission-{tag}-{n}",
                "kind": "claravine.submission",
                "params": {"dataset": CLARAVINE_DATASET, "source": str(src)},
            },
            {
                "name": f"transactions-{tag}-{n}",
                "kind": "claravine.transactions_export",
                "params": {
                    "dataset": CLARAVINE_DATASET,
                    "start-date": "{{ day-1 }}",
                    "end-date": "{{ day+1 }}",
                },
            },
        ]
    return out


def claribi_jobs(tmp_path: Path, tag: str, copies: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {
            "name": f"report-{tag}-{n}",
            "kind": "claribi.report",
            "params": {"template_id": CLARIBI_TEMPLATE, "data_source_ids": [CLARIBI_SOURCE]},
        }
        for n in range(copies)
    ]
    out.append(
        {
            "name": f"dashboards-{tag}",
            "kind": "claribi.dashboard_refresh",
            "params": {"dashboards": DASHBOARDS[:copies]},
        }
    )
    return out


def clayva_imports(tmp_path: Path, tag: str, copies: int) -> list[dict[str, Any]]:
    out = []
    for n in range(copies):
        events = [
            {
                "event": "Product Viewed",
                "userId": f"user-{tag}-{n}-{i}",
                "timestamp": f"2026-11-21T10:00:{i:02d}Z",
            }
            for i in range(10)
        ]
        source = write_lines(tmp_path / "in" / f"events-{tag}-{n}" / "e.jsonl", events)
        out.append(
            {
                "name": f"events-{tag}-{n}",
                "kind": "clayva.events_import",
                "params": {"source": source},
            }
        )
    return out


def clari_received(s: Server) -> dict[str, int]:
    return {"created": s.sims.clari.stats["created"]}


def ingest_received(s: Server) -> dict[str, int]:
    ids = [r["id"] for r in s.sims.clari_ingest.received.get("account", [])]
    assert all(i.startswith(f"{s.tag}-") for i in ids), ids  # no other account's records
    return {"records": len(ids)}


def claro_received(s: Server) -> dict[str, int]:
    return {"exports": s.sims.claro.stats["exports"]}


def claravine_received(s: Server) -> dict[str, int]:
    names = [row[0] for tx in s.sims.claravine.transactions.values() for row in tx.rows]
    assert all(n.startswith(f"Campaign {s.tag} ") for n in names), names
    return {"rows": len(names), "lists": s.sims.claravine.stats["list_requests"]}


def claribi_received(s: Server) -> dict[str, int]:
    stats = s.sims.claribi.stats
    return {"generated": stats["generated"], "refreshed": stats["refreshed"]}


def clayva_received(s: Server) -> dict[str, int]:
    users = [e["userId"] for e in s.sims.clayva.state.events]
    assert all(u.startswith(f"user-{s.tag}-") for u in users), users
    return {"events": len(users)}


@dataclass(frozen=True, kw_only=True)
class Family:
    provider: str
    pipelines: Callable[[Path, str, int], list[dict[str, Any]]]
    received: Callable[[Server], dict[str, int]]
    # what a server receives for `copies` of the family's pipelines
    expected: Callable[[int], dict[str, int]]


FAMILIES = {
    "clari.export": Family(
        provider="clari",
        pipelines=clari_exports,
        received=clari_received,
        expected=lambda n: {"created": 3 * n},
    ),
    "clari.ingest": Family(
        provider="clari",
        pipelines=clari_ingests,
        received=ingest_received,
        expected=lambda n: {"records": 20 * n},
    ),
    "claro": Family(
        provider="claro",
        pipelines=claro_exports,
        received=claro_received,
        expected=lambda n: {"exports": n},
    ),
    "claravine": Family(
        provider="claravine",
        pipelines=claravine_jobs,
        received=claravine_received,
        # the export lists once per job; it may run before or after the submission
        expected=lambda n: {"rows": 5 * n, "lists": n},
    ),
    "claribi": Family(
        provider="claribi",
        pipelines=claribi_jobs,
        received=claribi_received,
        expected=lambda n: {"generated": n, "refreshed": n},
    ),
    "clayva": Family(
        provider="clayva",
        pipelines=clayva_imports,
        received=clayva_received,
        expected=lambda n: {"events": 10 * n},
    ),
}


def test_the_families_cover_every_kind(tmp_path: Path) -> None:
    kinds = {p["kind"] for f in FAMILIES.values() for p in f.pipelines(tmp_path, "x", 1)}
    assert kinds == set(KINDS)
    for f in FAMILIES.values():
        assert {KINDS[p["kind"]].provider for p in f.pipelines(tmp_path, "y", 1)} == {f.provider}


@pytest.mark.parametrize("family", sorted(FAMILIES))
async def test_each_account_reaches_its_own_server_only(
    tmp_path: Path, servers: dict[str, Server], family: str
) -> None:
    f = FAMILIES[family]
    copies = {PREFIXED: 1, TYPED: 2}  # unequal, so swapped servers would show
    providers = {account_name(f.provider, tag): account(f.provider, servers[tag]) for tag in copies}
    pipelines = []
    for tag, n in copies.items():
        name = account_name(f.provider, tag)
        pipelines += [{**p, "account": name} for p in f.pipelines(tmp_path, tag, n)]
    cfg = write_config(tmp_path, providers, pipelines)
    assert cfg.account_type("emea_org") == f.provider
    assert cfg.account_type(f"{f.provider}-emea") == f.provider

    assert await run_once(cfg, timeout=60) == 0
    jobs = await all_jobs(cfg)
    assert jobs and all(j.state == JobState.SUCCEEDED for j in jobs), [
        (j.pipeline, j.state, j.error) for j in jobs
    ]
    for j in jobs:  # the ledger keys every job on its account, which every limit keys on
        tag = j.pipeline.split("-")[1]  # <what>-<tag>[-<n>]
        assert j.provider == account_name(f.provider, tag), (j.pipeline, j.provider)
    for tag, n in copies.items():
        assert f.received(servers[tag]) == f.expected(n), tag


# --- limits, per account -----------------------------------------------------------------------


def forecast(name: str, acct: str) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "clari.forecast_export",
        "account": acct,
        "params": {"forecastId": "fc_1", "timePeriod": "2026_Q4", "exportFormat": "CSV"},
    }


async def quota_spent(cfg: Config, acct: str) -> int:
    ledger = Ledger(cfg.ledger.url)
    try:
        return len(await ledger.quota_times(acct, utcnow() - timedelta(days=1)))
    finally:
        await ledger.close()


async def test_concurrency_and_quota_are_kept_per_account(
    tmp_path: Path, servers: dict[str, Server]
) -> None:
    """clari-emea: one job at a time and two in its quota; emea_org (type = "clari"): three at a
    time and no cap of ours. Neither account's limits hold the other back."""
    emea, org = servers[PREFIXED], servers[TYPED]
    for s in (emea, org):
        s.sims.clari.config.concurrent_limit = 5
        s.sims.clari.config.duration = 0.4
    cfg = write_config(
        tmp_path,
        {
            "clari-emea": account("clari", emea, concurrency=1, monthly_quota=2),
            "emea_org": account("clari", org, concurrency=3),
        },
        [forecast(f"e{i}", "clari-emea") for i in range(4)]
        + [forecast(f"o{i}", "emea_org") for i in range(6)],
    )
    daemon = Daemon(cfg, once=True)
    task = await start(daemon)

    def settled(jobs: list[Job]) -> bool:
        done = [j for j in jobs if j.state == JobState.SUCCEEDED]
        return len(done) == 8

    jobs = await wait_for_jobs(cfg, settled, timeout=30)
    await asyncio.sleep(0.5)  # time enough to (wrongly) submit more
    daemon.stop()
    assert await task == 0
    jobs = await all_jobs(cfg)
    by_pipeline = {j.pipeline: j for j in jobs}
    assert all(by_pipeline[f"o{i}"].state == JobState.SUCCEEDED for i in range(6))
    emea_jobs = [by_pipeline[f"e{i}"] for i in range(4)]
    assert sum(j.state == JobState.SUCCEEDED for j in emea_jobs) == 2
    waiting = [j for j in emea_jobs if j.state != JobState.SUCCEEDED]
    assert all(j.state == JobState.PENDING and j.attempts == 0 for j in waiting)

    assert emea.sims.clari.stats["created"] == 2
    assert emea.sims.clari.stats["max_active"] == 1
    assert org.sims.clari.stats["created"] == 6
    assert 2 <= org.sims.clari.stats["max_active"] <= 3  # not held to clari-emea's one
    assert await quota_spent(cfg, "clari-emea") == 2
    assert await quota_spent(cfg, "emea_org") == 6


async def test_an_accounts_ingest_holds_none_of_its_export_slots(
    tmp_path: Path, servers: dict[str, Server]
) -> None:
    """Clari ingest jobs use none of the account's export slots, for an account named
    clari-emea too (its budget once counted them on every limits refresh: the kinds' provider
    was compared with the account's name, so one slot and a running ingestion held every
    export back until the ingestion ended)."""
    emea = servers[PREFIXED]
    emea.sims.clari_ingest.config.duration = 4.0
    (ingest,) = clari_ingests(tmp_path, PREFIXED, 1)
    cfg = write_config(
        tmp_path,
        {"clari-emea": account("clari", emea, concurrency=1, limits_refresh="0.1s")},
        [{**ingest, "account": "clari-emea"}] + [forecast(f"f{i}", "clari-emea") for i in range(3)],
    )
    assert await run_once(cfg, timeout=60) == 0
    jobs = await all_jobs(cfg)
    assert all(j.state == JobState.SUCCEEDED for j in jobs), [(j.pipeline, j.error) for j in jobs]
    (ingested,) = [j for j in jobs if j.kind == "clari.ingest"]
    exports = [j for j in jobs if j.kind == "clari.forecast_export"]
    assert ingested.finished_at is not None
    assert all(j.finished_at is not None and j.finished_at < ingested.finished_at for j in exports)
    assert emea.sims.clari.stats["max_active"] == 1
    assert await quota_spent(cfg, "clari-emea") == 3  # the exports' only


# --- what a user sees per account: `quota`, the status page, /metrics ---------------------------


async def test_quota_status_page_and_metrics_show_each_account_with_its_type(
    tmp_path: Path, servers: dict[str, Server]
) -> None:
    from orchestrator.ledger import migrate
    from orchestrator.quota import quota_report
    from orchestrator.scheduler import trigger

    emea, org = servers[PREFIXED], servers[TYPED]
    cfg = write_config(
        tmp_path,
        {
            "clari-emea": account("clari", emea, monthly_quota=50, quota_reserve=5),
            "emea_org": account("clari", org, concurrency=2),
            "vine": {**account("claravine", org), "type": "claravine"},
        },
        [forecast("e0", "clari-emea")] + [forecast(f"o{i}", "emea_org") for i in range(3)],
    )
    daemon = Daemon(cfg)
    await migrate.upgrade(daemon.ledger)
    for p in cfg.pipelines:
        await trigger(daemon.ledger, p)
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.ready.wait(), 15)
        await wait_for_jobs(
            cfg, lambda js: len(js) == 4 and all(j.state == JobState.SUCCEEDED for j in js)
        )
        base = f"http://127.0.0.1:{daemon.web.port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "/") as r:
                page = await r.text()
            async with http.get(base + "/metrics") as r:
                metrics = await r.text()
    finally:
        daemon.stop()
        assert await asyncio.wait_for(task, 15) == 0

    accounts = page.split('<table id="accounts">', 1)[1].split("</table>", 1)[0]
    assert "<th>account</th><th>type</th>" in accounts
    for name, kind in (("clari-emea", "clari"), ("emea_org", "clari"), ("vine", "claravine")):
        assert f"<tr><td>{name}</td><td>{kind}</td>" in accounts
    assert "1 / 50" in accounts  # clari-emea's own count against its own cap

    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    info = {
        (s.labels["provider"], s.labels["type"])
        for s in families["orchestrator_account_info"].samples
    }
    assert info == {("clari-emea", "clari"), ("emea_org", "clari"), ("vine", "claravine")}
    reserve = {
        (s.labels["provider"], s.labels["type"]): s.value
        for s in families["orchestrator_quota_reserve"].samples
    }
    assert reserve == {
        ("clari-emea", "clari"): 5,
        ("emea_org", "clari"): 0,
        ("vine", "claravine"): 0,
    }
    limits = {
        s.labels["provider"]: s.value for s in families["orchestrator_concurrency_limit"].samples
    }
    assert limits["emea_org"] == 2
    submitted = {
        s.labels["provider"]: s.value
        for s in families["orchestrator_submissions"].samples
        if s.name.endswith("_total")
    }
    assert submitted == {"clari-emea": 1, "emea_org": 3}

    ledger = Ledger(cfg.ledger.url)
    try:
        report = await quota_report(cfg, ledger, online=True)
    finally:
        await ledger.close()
    assert {name: r["type"] for name, r in report.items()} == {
        "clari-emea": "clari",
        "emea_org": "clari",
        "vine": "claravine",
    }
    assert report["clari-emea"]["used"] == 1 and report["emea_org"]["used"] == 3
    assert report["clari-emea"]["monthly_quota"] == 50  # our cap, below the server's 1000
    assert report["clari-emea"]["available"] == 50 - 5 - 1
    assert report["emea_org"]["monthly_quota"] == 1000  # its server's own figure
    assert report["emea_org"]["provider_available_quota"] == 1000 - 3
    assert report["clari-emea"]["provider_available_quota"] == 1000 - 1
