"""Replica chaos (issue 16): three daemons on one PostgreSQL ledger over five provider accounts
and every job family — Clari exports, Clari ingest, a Claro export in parts, a Claravine import,
clariBI reports and dashboard refreshes, a Clayva import — while one replica after another is
killed with SIGKILL every few seconds and started again (21 kills). Work keeps arriving
throughout. Whatever the kills hit: every job succeeds, no remote job is created twice (Clayva
may count the one batch in the air at a kill twice, as its README section says), the providers
never refuse anything for a limit, no one-second window at any server holds more requests of an
endpoint group than the account's `requests_per_second`, and each account a killed replica held
is taken by another replica within the lease (kill → `leases.acquired_at`, both by the
database's clock). A summary table goes to the test's output."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from orchestrator.simulator.claravine import CAMPAIGN_FIELDS
from orchestrator.simulator.claro import ClaroDataset
from tests.acceptance.helpers import cli, http_json, simulator_process, start_daemon
from tests.conftest import API_SECRET, CLARIBI_KEY, PARTNER_KEY, write_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]
REPLICAS = 3
KILLS = 21
LEASE = 3.0
PER_SECOND = 10  # every account's requests_per_second (the default, written out)
ACCOUNTS = ["clari", "claravine", "claribi", "clayva", "claro"]
DATASET = "4f1c2a9e-0000-4000-8000-000000000001"
CLARO_ROWS, CLARO_PART = 3_000, 500
IMPORT_ROWS, IMPORT_CHUNK = 1_000, 250
EVENTS, EVENT_BATCH = 1_000, 200
INGEST_RECORDS = 300
TEMPLATE = "550e8400-e29b-41d4-a716-446655440010"
SOURCE = "123e4567-e89b-12d3-a456-426614174000"
DASHBOARDS = ["550e8400-e29b-41d4-a716-446655440020", "550e8400-e29b-41d4-a716-446655440021"]
FINISHED = ("SUCCEEDED", "FAILED", "CANCELLED")


@pytest.fixture
def sim() -> Iterator[str]:
    """Every simulator in its own process (it outlives every replica), Clari at 3 slots."""
    yield from simulator_process(duration=0.6, concurrent_limit=3, path="")


@pytest.fixture
def db(postgres_url: str) -> Iterator[Db]:
    ledger = Db(postgres_url)
    yield ledger
    ledger.conn.close()


class Db:
    """The ledger read from the side (psycopg, autocommit: every read sees the latest)."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True)

    def one(self, sql: str, *args: object) -> Any:
        row = self.conn.execute(sql, args).fetchone()
        return None if row is None else row[0]

    def all(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        return list(self.conn.execute(sql, args).fetchall())

    def now(self) -> datetime:
        value: datetime = self.one("SELECT timezone('utc', clock_timestamp())")
        return value

    def replica_id(self, pid: int) -> str | None:
        found: str | None = self.one(
            "SELECT id FROM replicas WHERE pid = %s AND host = %s AND stopped_at IS NULL "
            "ORDER BY started_at DESC LIMIT 1",
            pid,
            socket.gethostname(),
        )
        return found

    def held_by(self, replica: str) -> list[str]:
        return [
            name
            for (name,) in self.all(
                "SELECT name FROM leases WHERE owner = %s AND name <> '*leader' "
                "AND expires_at > timezone('utc', clock_timestamp()) ORDER BY name",
                replica,
            )
        ]

    def unfinished(self) -> int:
        return int(
            self.one("SELECT count(*) FROM jobs WHERE state <> ALL(%s)", list(FINISHED)) or 0
        )


def _pipelines(inbox: Path) -> list[dict[str, Any]]:
    forecasts = [
        {
            "name": f"fc-{i}",
            "kind": "clari.forecast_export",
            "params": {
                "forecastId": f"forecast_{i}",
                "timePeriod": f"2026_Q{1 + i}",
                "scopeId": f"scope-{i}",
                "exportFormat": "CSV" if i % 2 else "JSON",
            },
        }
        for i in range(3)
    ]
    return [
        *forecasts,
        {
            "name": "audit",
            "kind": "clari.audit_export",
            "params": {"dateFrom": "2026-11-01", "actorId": 100},
        },
        {
            "name": "health",
            "kind": "clari.ingest",
            "params": {"entity": "account", "source": f"{inbox}/health/*.jsonl"},
        },
        {
            "name": "products",
            "kind": "claro.dataset_export",
            "params": {"datasetId": "ds_chaos", "partRows": CLARO_PART},
        },
        {
            "name": "taxonomy",
            "kind": "claravine.submission",
            "params": {
                "dataset": DATASET,
                "source": f"{inbox}/campaigns/*.csv",
                "rowsPerPost": IMPORT_CHUNK,
            },
        },
        {
            "name": "summary",
            "kind": "claribi.report",
            "params": {
                "template_id": TEMPLATE,
                "data_source_ids": [SOURCE],
                "output_format": "csv",
            },
        },
        {
            "name": "dashboards",
            "kind": "claribi.dashboard_refresh",
            "params": {"dashboards": DASHBOARDS},
        },
        {
            "name": "events",
            "kind": "clayva.events_import",
            "params": {"source": f"{inbox}/events/*.jsonl", "batchSize": EVENT_BATCH},
        },
    ]


def _write_inputs(inbox: Path, wave: int) -> None:
    """One new file per import pipeline (an import enqueues one job per new file)."""
    for sub in ("health", "campaigns", "events"):
        (inbox / sub).mkdir(parents=True, exist_ok=True)
    with (inbox / "campaigns" / f"w{wave:03d}.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CAMPAIGN_FIELDS)
        w.writerows(
            [f"W{wave}C{i}", "S1", "Adults", "Brand", "Ops", "2026-11"] for i in range(IMPORT_ROWS)
        )
    events = (
        json.dumps(
            {
                "event": "Viewed",
                "userId": f"u{i % 9}",
                "timestamp": "2026-11-21T10:00:00Z",
                "properties": {"wave": wave, "n": i},
            }
        )
        for i in range(EVENTS)
    )
    (inbox / "events" / f"w{wave:03d}.jsonl").write_text("\n".join(events) + "\n")
    ms = 1_700_000_000_000 + wave * 10_000
    health = (
        json.dumps(
            {
                "sourceEntity": "health",
                "id": f"001W{wave:03d}{i:011d}",
                "createdAt": ms,
                "updatedAt": ms + i,
                "healthScore": i % 100,
            }
        )
        for i in range(INGEST_RECORDS)
    )
    (inbox / "health" / f"w{wave:03d}.jsonl").write_text("\n".join(health) + "\n")


def _enqueue_wave(config: Path, inbox: Path, wave: int) -> int:
    """One run of every pipeline, as `orchestrator trigger` does, in one process (a CLI per
    pipeline would take seconds a wave)."""
    from orchestrator.config import load_config
    from orchestrator.ledger.store import Ledger
    from orchestrator.scheduler import trigger_all

    _write_inputs(inbox, wave)
    cfg = load_config(config, secrets=False)

    async def go() -> int:
        ledger = Ledger(cfg.ledger.url)
        try:
            return sum([len(await trigger_all(ledger, p)) for p in cfg.pipelines])
        finally:
            await ledger.close()

    return asyncio.run(go())


def _max_in_window(times: list[float], window: float = 1.0) -> int:
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def _group(provider: str, path: str) -> str:
    """The daemon's rate group of a request: a client's base URL, or Claro's downloads."""
    if provider == "claro" and "/_files/" in path:
        return "claro downloads"
    return provider


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def test_three_replicas_21_kills_lose_nothing_duplicate_nothing_exceed_nothing(
    tmp_path: Path, sim: str, postgres_url: str, db: Db
) -> None:
    started = time.monotonic()
    rng = random.Random(16)
    urls = {
        "clari": sim + "/clari/v4",
        "clari ingest": sim + "/clari/v2",
        "claro": sim + "/claro/api/v2",
        "claravine": sim + "/claravine/v1",
        "claribi": sim + "/claribi/api/v1",
        "clayva": sim + "/clayva/v1",
    }
    # Every request a little slow, so the kills find calls in the air; some Clari submit
    # answers lost (created, then the connection dropped) for reconciliation.
    http_json(urls["clari"] + "/_sim/config", {"latency": 0.02, "lost_submit_rate": 0.05})
    http_json(urls["claro"] + "/_sim/config", {"latency": 0.02, "rate_limit": 100_000})
    http_json(urls["claravine"] + "/_sim/config", {"processing_time": 0.3, "latency": 0.02})
    http_json(urls["claribi"] + "/_sim/config", {"latency": 0.02, "credits_limit": 1_000_000})
    http_json(urls["clayva"] + "/_sim/config", {"latency": 0.02})
    http_json(
        urls["claro"] + "/_sim/datasets", [{"id": "ds_chaos", "name": "C", "rows": CLARO_ROWS}]
    )  # type: ignore[arg-type]

    inbox = tmp_path / "inbox"
    poll = {"initial": "0.1s", "max_interval": "0.3s"}
    common = {"requests_per_second": PER_SECOND, "poll": poll}
    config = write_config(
        tmp_path,
        urls["clari"],
        _pipelines(inbox),
        provider={"retries": 1, "partner_key": PARTNER_KEY, **common},
        providers={
            # Per-minute caps no 10/s pace can reach: only the one-second windows bind (a
            # takeover waits those out, not a minute).
            "claro": {"base_url": urls["claro"], "requests_per_minute": 6_000, **common},
            "claravine": {"base_url": urls["claravine"], "api_secret": API_SECRET, **common},
            "claribi": {"base_url": urls["claribi"], "api_key": CLARIBI_KEY, **common},
            "clayva": {"base_url": urls["clayva"], "requests_per_minute": 6_000, **common},
        },
        ledger_url=postgres_url.replace("postgresql://", "postgresql+asyncpg://", 1),
    )
    text = config.read_text().replace("[ledger]\n", f'[ledger]\nlease = "{LEASE:g}s"\n', 1)
    config.write_text(text)
    cli("db", "upgrade", "--config", str(config), check=True)
    wave = 0
    enqueued = _enqueue_wave(config, inbox, wave)

    logs = tmp_path / "logs"
    logs.mkdir()
    generation = [0] * REPLICAS

    def start(n: int) -> subprocess.Popen[bytes]:
        generation[n] += 1
        with (logs / f"replica{n}-{generation[n]:02d}.log").open("wb") as out:
            return start_daemon(config, stdout=out, stderr=subprocess.STDOUT)  # its own copy

    replicas = [start(n) for n in range(REPLICAS)]
    deadline = time.monotonic() + 30
    while len([a for n in range(REPLICAS) for a in _held(db, replicas[n].pid)]) < len(ACCOUNTS):
        assert all(r.poll() is None for r in replicas), "a replica exited at start"
        assert time.monotonic() < deadline, "the replicas did not take every account"
        time.sleep(0.1)

    kills: list[dict[str, Any]] = []
    takeovers: list[float] = []
    while len(kills) < KILLS:
        if db.unfinished() < 12:  # keep work arriving: the kills must keep finding some
            wave += 1
            enqueued += _enqueue_wave(config, inbox, wave)
        n = len(kills) % REPLICAS
        victim = replicas[n]
        # The victim came back since its last kill and took its share: the accounts spread
        # over the live replicas (a surplus holder gives some back, within about a lease).
        me, held = None, []
        until = time.monotonic() + 4 * LEASE + 10
        while not held:
            assert victim.poll() is None, f"replica {n} exited by itself: see {logs}"
            assert time.monotonic() < until, f"replica {n} never took an account: see {logs}"
            time.sleep(0.05)
            me = db.replica_id(victim.pid)
            held = db.held_by(me) if me else []
        time.sleep(rng.uniform(0.2, 1.5))  # then a random moment of its work
        held = db.held_by(me) if me else []
        at = db.now()
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(10)
        # Each of its accounts: taken by a live replica, after the kill (the database's clock).
        taken: dict[str, float] = {}
        until = time.monotonic() + LEASE + 10
        while len(taken) < len(held) and time.monotonic() < until:
            for name, owner, acquired in db.all(
                "SELECT name, owner, acquired_at FROM leases WHERE name = ANY(%s)", held
            ):
                if owner and owner != me and acquired is not None and acquired > at:
                    taken.setdefault(name, (acquired - at).total_seconds())
            time.sleep(0.02)
        assert set(taken) == set(held), (held, taken, f"see {logs}")
        takeovers += taken.values()
        kills.append({"replica": n, "held": held, "takeover": taken})
        replicas[n] = start(n)

    # The kills are over: let the replicas finish what is left, then stop them cleanly.
    killing = time.monotonic() - started
    deadline = time.monotonic() + 120
    while db.unfinished():
        assert all(r.poll() is None for r in replicas), f"a replica exited: see {logs}"
        assert time.monotonic() < deadline, (db.unfinished(), f"see {logs}")
        time.sleep(0.2)
    # The last one restarted may still be starting: a stop is asked of a running daemon.
    deadline = time.monotonic() + 30
    while not all(db.replica_id(r.pid) for r in replicas):
        assert time.monotonic() < deadline, f"a replica did not come up: see {logs}"
        time.sleep(0.1)
    for r in replicas:
        r.send_signal(signal.SIGTERM)
    for r in replicas:
        assert r.wait(30) == 0, f"a replica did not stop cleanly: see {logs}"

    listed = cli("jobs", "list", "--json", "--limit", "100000", "--config", str(config), check=True)
    jobs = json.loads(listed.stdout)
    assert len(jobs) == enqueued
    assert all(j["state"] == "SUCCEEDED" for j in jobs), [
        (j["id"], j["pipeline"], j["state"], j["error"]) for j in jobs if j["state"] != "SUCCEEDED"
    ]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        by_kind.setdefault(str(job["kind"]), []).append(job)

    # Clari exports: each job has the remote job made for its own params; no remote job is
    # anyone else's or nobody's; the provider never refused one for its limits.
    exports = [j for j in jobs if str(j["kind"]).endswith("_export") and j["provider"] == "clari"]
    remote = {r["jobId"]: r for r in http_json(urls["clari"] + "/_sim/jobs")}  # type: ignore[union-attr]
    for job in exports:
        made = remote[job["remote_id"]]
        sent = {k: v for k, v in job["params"].items() if k != "forecastId" and v is not None}
        assert made["params"] == sent, (job["pipeline"], made["params"], sent)
    assert sorted(j["remote_id"] for j in exports) == sorted(remote)
    clari = http_json(urls["clari"] + "/_sim/stats")
    assert clari["rejected_limits"] == 0 and clari["max_active"] <= 3, clari  # type: ignore[index,operator]

    # Clari ingest: every record arrived (a file in the air at a kill may go twice: upserts).
    ingest = http_json(urls["clari ingest"] + "/_sim/stats")
    assert ingest["too_many"] == 0, ingest  # type: ignore[index]
    n_ingest = len(by_kind["clari.ingest"])
    assert n_ingest * INGEST_RECORDS <= ingest["records"]["account"], ingest  # type: ignore[index]

    # Claro: every part in every result, in order, once. An export call makes only a download
    # URL: each owner asks afresh for the parts not DONE when it took the account (README:
    # "asks for a fresh URL for each part not DONE"), at most one per job it can run at once
    # (Claro's concurrency, 4) each time the account changed hands (a kill or a give-back).
    d = ClaroDataset(id="ds_chaos", name="C", rows=CLARO_ROWS)
    expected_rows = [d.row(i) for i in range(CLARO_ROWS)]
    for job in by_kind["claro.dataset_export"]:
        assert job["result_rows"] == CLARO_ROWS
        with open(str(job["result_path"]), newline="") as f:
            assert list(csv.reader(f))[1:] == expected_rows
    claro = http_json(urls["claro"] + "/_sim/stats")
    parts = len(by_kind["claro.dataset_export"]) * (CLARO_ROWS // CLARO_PART)
    handovers = int(db.one("SELECT epoch FROM leases WHERE name = 'claro'"))
    assert parts <= claro["exports"] <= parts + 4 * handovers, (claro, handovers)  # type: ignore[index,operator]
    assert claro["rate_limited"] == 0, claro  # type: ignore[index]

    # Claravine: every chunk once.
    claravine = http_json(urls["claravine"] + "/_sim/stats")
    n_imports = len(by_kind["claravine.submission"])
    assert claravine["duplicate_names"] == 0, claravine  # type: ignore[index]
    assert claravine["rows_received"] == n_imports * IMPORT_ROWS, claravine  # type: ignore[index]

    # clariBI: one generation per report job, one refresh per dashboard job (credits once).
    claribi = http_json(urls["claribi"] + "/_sim/stats")
    assert claribi["generated"] == len(by_kind["claribi.report"]), claribi  # type: ignore[index]
    assert claribi["refreshed"] == len(by_kind["claribi.dashboard_refresh"]), claribi  # type: ignore[index]
    assert claribi["rate_limited"] == 0, claribi  # type: ignore[index]

    # Clayva: every event; twice only within the one batch in the air at a kill.
    clayva = http_json(urls["clayva"] + "/_sim/stats")
    n_events = len(by_kind["clayva.events_import"])
    assert clayva["events"] - clayva["duplicates"] == n_events * EVENTS, clayva  # type: ignore[index,operator]
    assert clayva["duplicates"] <= EVENT_BATCH * KILLS, clayva  # type: ignore[index,operator]
    assert clayva["rate_limited"] == 0, clayva  # type: ignore[index]

    # Request rate in total, at each server: no one-second window of any endpoint group above
    # the account's requests_per_second, whichever replicas the requests came from.
    peaks: dict[str, int] = {}
    for provider, url in urls.items():
        log = http_json(url + "/_sim/requests")["requests"]  # type: ignore[index]
        groups: dict[str, list[float]] = {}
        for t, path in log:
            groups.setdefault(_group(provider.split()[0], path), []).append(t)
        for group, times in groups.items():
            peaks[f"{provider}: {group}"] = _max_in_window(times)
    assert all(peak <= PER_SECOND for peak in peaks.values()), peaks

    # Takeover: every account a killed replica held was taken by another within the lease.
    assert len(takeovers) >= KILLS, kills  # most kills hit a replica holding accounts
    worst = max(takeovers)
    summary = [
        "",
        f"replica chaos ({REPLICAS} replicas, {len(ACCOUNTS)} accounts, lease {LEASE:g}s, "
        f"{time.monotonic() - started:.0f} s)",
        f"  {'kills':<24}{len(kills)} in {killing:.0f} s",
        f"  {'jobs (all SUCCEEDED)':<24}{len(jobs)} in {wave + 1} waves",
        f"  {'takeovers':<24}{len(takeovers)}",
        f"  {'takeover p50':<24}{statistics.median(takeovers):.2f} s",
        f"  {'takeover p95':<24}{_pct(takeovers, 0.95):.2f} s",
        f"  {'takeover max':<24}{worst:.2f} s (lease {LEASE:g} s)",
        f"  {'peak requests/s':<24}{max(peaks.values())} (limit {PER_SECOND})",
        f"  {'clari created':<24}{clari['created']} for {len(exports)} exports, 0 refused",  # type: ignore[index]
        f"  {'clayva duplicates':<24}{clayva['duplicates']} events",  # type: ignore[index]
    ]
    print("\n".join(summary))
    assert worst <= LEASE, sorted(takeovers)[-5:]


def _held(db: Db, pid: int) -> list[str]:
    me = db.replica_id(pid)
    return db.held_by(me) if me else []
