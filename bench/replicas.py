"""Benchmark 9 (issue 16): replicas on one PostgreSQL ledger (a scratch database on
127.0.0.1:5432, dropped afterwards).

- End-to-end jobs/s with 1 and with 3 replicas over 3 accounts (`clari`, `clari-b`,
  `clari-c`, one simulator with its limits raised; each account's three export modules), the
  same job set each time: the rate is
  the jobs over the time from the first submission to the last success, as the ledger's
  transitions record them (start-up is not counted).
- Takeover time: 3 replicas with a 3 s lease; one holding accounts is killed with SIGKILL,
  the time to each of its accounts' `leases.acquired_at` by another (the database's clock),
  then it is restarted; a few times.

The grouped durable transitions/s on PostgreSQL beside SQLite are bench 2 (bench/ledger.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import ROOT, Simulator, scratch

ACCOUNTS = ["clari", "clari-b", "clari-c"]
LEASE = 3.0
SPREAD_LEASE = 10.0  # the throughput runs: an idle replica gives back its surplus every 2 s
KILLS = 6
# One pipeline of each Clari export module per account: an account submits one job of a module
# at a time (its ambiguity class), so three modules give each account three submissions at once.
MODULES = {
    "clari.forecast_export": '{ forecastId = "fc", timePeriod = "2026_Q4", exportFormat = "CSV" }',
    "clari.activity_export": (
        '{ startDate = "2026-11-01T00:00:00Z", endDate = "2026-11-02T00:00:00Z" }'
    ),
    "clari.audit_export": '{ dateFrom = "2026-11-01" }',
}


def _config(tmp: Path, base_url: str, ledger_url: str, *, lease: float = 30.0) -> Path:
    lines = [
        "[ledger]",
        f'url = "{ledger_url}"',
        f'lease = "{lease:g}s"',
        "[output]",
        f'dir = "{tmp / "results"}"',
        "[web]",
        "port = 0",
        "[daemon]",
        'claim_interval = "0.05s"',
        "max_submits = 64",
        "max_fetches = 32",
        'retry_base = "0.1s"',
    ]
    for account in ACCOUNTS:
        lines += [
            f"[providers.{account}]",
            f'base_url = "{base_url}"',
            'api_key = "bench-key"',
            "requests_per_second = 100000",
            "retries = 3",
            'limits_refresh = "600s"',
            'poll = { initial = "0.05s", max_interval = "0.5s", min_interval = "0.01s" }',
        ]
    for account in ACCOUNTS:
        for kind, params in MODULES.items():
            lines += [
                "[[pipelines]]",
                f'name = "{kind.split(".")[1]}-{account}"',
                f'kind = "{kind}"',
                f'account = "{account}"',
                f"params = {params}",
            ]
    path = tmp / "bench.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _daemon(config: Path, *args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    out = log.open("wb") if log is not None else None
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "run", "--config", str(config), *args],
            cwd=ROOT,
            stdout=out or subprocess.DEVNULL,
            stderr=subprocess.STDOUT if out else subprocess.DEVNULL,
        )
    finally:
        if out is not None:
            out.close()


def _enqueue(config: Path, per_pipeline: int) -> int:
    from orchestrator.config import load_config
    from orchestrator.ledger import migrate
    from orchestrator.ledger.store import Ledger, utcnow
    from orchestrator.scheduler import enqueue_run

    cfg = load_config(config, secrets=False)

    async def go() -> int:
        lg = Ledger(cfg.ledger.url)
        await migrate.upgrade(lg)
        await lg.start()
        try:
            now = utcnow()
            made = 0
            for p in cfg.pipelines:
                for start in range(0, per_pipeline, 500):
                    ids = await asyncio.gather(
                        *(
                            enqueue_run(lg, p, fire_time=now, key=f"b:{p.name}:{i}", reason="b")
                            for i in range(start, min(per_pipeline, start + 500))
                        )
                    )
                    made += sum(1 for i in ids if i is not None)
            return made
        finally:
            await lg.close()

    return asyncio.run(go())


def _window(conn: Any) -> tuple[int, float]:
    """Succeeded jobs, and seconds from the first submission to the last success."""
    n, first, last = conn.execute(
        "SELECT (SELECT count(*) FROM jobs WHERE state = 'SUCCEEDED'), "
        "(SELECT min(at) FROM transitions WHERE to_state = 'SUBMITTING'), "
        "(SELECT max(at) FROM transitions WHERE to_state = 'SUCCEEDED')"
    ).fetchone()
    return int(n), (last - first).total_seconds()


def end_to_end(replicas: int, per_pipeline: int) -> dict[str, Any]:
    """The replicas are started first and have spread the accounts (each holds its share)
    before the jobs arrive: the steady state, not who starts first (replicas started together
    spread as the first one gives back what it holds beyond its share)."""
    import psycopg

    from orchestrator.ledger import testing as pg

    server = pg.admin_conninfo()
    with (
        scratch() as d,
        Simulator(concurrent_limit=10**9, monthly_quota=10**9, queue_delay=0, duration=0) as sim,
        pg.scratch_database(server, prefix="orch_bench") as url,
        psycopg.connect(url, autocommit=True) as conn,
    ):
        ledger_url = url.replace("postgresql://", "postgresql+asyncpg://", 1)
        config = _config(Path(d), sim.base, ledger_url, lease=SPREAD_LEASE)
        _enqueue(config, 0)  # migrated before the replicas start
        procs = [_daemon(config) for _ in range(replicas)]
        try:
            deadline = time.monotonic() + 60
            while _owners(conn) != replicas:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{replicas} replicas did not spread the accounts")
                time.sleep(0.2)
            jobs = _enqueue(config, per_pipeline)
            deadline = time.monotonic() + 600
            while (done := _window(conn)[0]) < jobs:
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise RuntimeError(f"{replicas} replicas: {done}/{jobs} done")
                time.sleep(0.2)
            owners = _owners(conn)
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(60)
        done, seconds = _window(conn)
        return {
            "replicas": replicas,
            "jobs": jobs,
            "created": sim.stats()["created"],
            "seconds": seconds,
            "jobs_per_s": jobs / seconds,
            "replicas_holding_accounts": owners,
        }


def _owners(conn: Any) -> int:
    row = conn.execute(
        "SELECT count(DISTINCT owner) FROM leases WHERE name <> '*leader' "
        "AND expires_at > timezone('utc', clock_timestamp())"
    ).fetchone()
    return int(row[0])


def _db_now(conn: Any) -> datetime:
    row = conn.execute("SELECT timezone('utc', clock_timestamp())").fetchone()
    return row[0]  # type: ignore[no-any-return]


def takeover(kills: int = KILLS) -> dict[str, Any]:
    """SIGKILL a replica holding accounts, `kills` times; each of its accounts' takeover."""
    import psycopg

    from orchestrator.ledger import testing as pg

    server = pg.admin_conninfo()
    host = socket.gethostname()
    times: list[float] = []
    with (
        scratch() as d,
        Simulator(concurrent_limit=10**9, monthly_quota=10**9) as sim,
        pg.scratch_database(server, prefix="orch_bench") as url,
        psycopg.connect(url, autocommit=True) as conn,
    ):
        ledger_url = url.replace("postgresql://", "postgresql+asyncpg://", 1)
        config = _config(Path(d), sim.base, ledger_url, lease=LEASE)
        _enqueue(config, 0)  # migrated before the replicas start

        def held(pid: int) -> tuple[str | None, list[str]]:
            row = conn.execute(
                "SELECT id FROM replicas WHERE pid = %s AND host = %s AND stopped_at IS NULL "
                "ORDER BY started_at DESC LIMIT 1",
                (pid, host),
            ).fetchone()
            if row is None:
                return None, []
            names = conn.execute(
                "SELECT name FROM leases WHERE owner = %s AND name <> '*leader' "
                "AND expires_at > timezone('utc', clock_timestamp())",
                (row[0],),
            ).fetchall()
            return row[0], [n for (n,) in names]

        procs = [_daemon(config) for _ in range(3)]
        try:
            for k in range(kills):
                n = k % len(procs)
                deadline = time.monotonic() + 6 * LEASE + 20
                me, names = held(procs[n].pid)
                while not names:  # it came back and took its share
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"replica {n} never took an account")
                    time.sleep(0.05)
                    me, names = held(procs[n].pid)
                time.sleep(0.3)
                me, names = held(procs[n].pid)
                at = _db_now(conn)
                os.kill(procs[n].pid, signal.SIGKILL)
                procs[n].wait(10)
                taken: dict[str, float] = {}
                deadline = time.monotonic() + LEASE + 10
                while len(taken) < len(names) and time.monotonic() < deadline:
                    for name, owner, acquired in conn.execute(
                        "SELECT name, owner, acquired_at FROM leases WHERE name = ANY(%s)",
                        (names,),
                    ).fetchall():
                        if owner and owner != me and acquired is not None and acquired > at:
                            taken.setdefault(name, (acquired - at).total_seconds())
                    time.sleep(0.01)
                if len(taken) < len(names):
                    raise RuntimeError(f"not taken over: {sorted(set(names) - set(taken))}")
                times += taken.values()
                procs[n] = _daemon(config)
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
    ordered = sorted(times)
    return {
        "lease_s": LEASE,
        "kills": kills,
        "takeovers": len(times),
        "p50_s": statistics.median(ordered),
        "p95_s": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
        "max_s": ordered[-1],
        "all_s": ordered,
    }


def run(per_pipeline: int = 400) -> dict[str, Any]:
    """None when no PostgreSQL server answers."""
    from orchestrator.ledger import testing as pg

    try:
        pg.admin_conninfo()
    except pg.NoServer:
        return {"postgres": None}
    one = end_to_end(1, per_pipeline)
    three = end_to_end(3, per_pipeline)
    return {
        "postgres": True,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "one": one,
        "three": three,
        "speedup": three["jobs_per_s"] / one["jobs_per_s"],
        "takeover": takeover(),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2, default=str))
