"""`make bench`: the whole suite, one table, bench/results/latest.json and polling.png.

Every figure is compared within the same run (a baseline measured beside it, or a target that
is itself a ratio), because absolute times on shared machines drift. Daemon and simulator run
in separate processes pinned to one core each.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import ledger, polling, replicas
from bench.common import ROOT, Simulator, scratch, write_config
from bench.imports import b8_imports

RESULTS = ROOT / "bench" / "results"
Row = dict[str, Any]


def worker(
    scenario: str, config: Path, n: int | None = None, *, log_level: str = "WARNING"
) -> dict[str, Any]:
    """One scenario in its own process. The daemon logs JSON lines to a pipe read here, at
    WARNING unless `log_level` says otherwise."""
    args = [sys.executable, "-m", "bench.worker", scenario, str(config)]
    if n is not None:
        args.append(str(n))
    env = dict(os.environ, BENCH_LOG_LEVEL=log_level)
    proc = subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"bench.worker {scenario} failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def row(n: int, what: str, value: str, target: str, ok: bool, detail: str = "") -> Row:
    return {
        "bench": n,
        "what": what,
        "value": value,
        "target": target,
        "pass": ok,
        "detail": detail,
    }


def _e2e_simulator() -> Simulator:
    return Simulator(
        concurrent_limit=10**9, monthly_quota=10**9, queue_delay=0, duration=0, result_rows=10
    )


E2E_DAEMON = {"max_submits": 256, "max_fetches": 128}  # no limits: let concurrency rise


def b1_end_to_end(jobs: int = 5000) -> tuple[list[Row], dict[str, Any]]:
    with scratch() as d, _e2e_simulator() as sim:
        cfg = write_config(Path(d), sim.base, daemon=E2E_DAEMON)
        out = worker("e2e", cfg, jobs)
        stats = sim.stats()
        # The same number of small files made durable the way the daemon does it, in the same
        # directory, before its files are deleted: what this disk alone allows per second.
        files = file_ceiling(Path(d) / "results" / "ceiling", jobs)
        floor = worker("http_floor", cfg, jobs)
    shm = _tmpfs()
    if shm is not None:  # the same run with results in memory: the daemon without the disk
        with (
            scratch() as d,
            tempfile.TemporaryDirectory(dir=shm) as out_dir,
            _e2e_simulator() as sim,
        ):
            cfg = write_config(Path(d), sim.base, daemon=E2E_DAEMON, output_dir=Path(out_dir))
            out["tmpfs"] = worker("e2e", cfg, jobs)
        with (  # and at the default log level: two JSON lines per job
            scratch() as d,
            tempfile.TemporaryDirectory(dir=shm) as out_dir,
            _e2e_simulator() as sim,
        ):
            cfg = write_config(Path(d), sim.base, daemon=E2E_DAEMON, output_dir=Path(out_dir))
            out["tmpfs_info"] = worker("e2e", cfg, jobs, log_level="INFO")
    raw = ledger.raw_sqlite(2000)
    rate = out["jobs_per_s"]
    per_job = (stats["list_requests"] + stats["status_requests"]) / jobs
    out.update(
        raw, sim_stats=stats, status_requests_per_job=per_job, http_floor=floor, file_ceiling=files
    )
    tmpfs = out.get("tmpfs", {}).get("jobs_per_s")
    tmpfs_info = out.get("tmpfs_info", {}).get("jobs_per_s")
    return [
        row(
            1,
            f"jobs/s end to end ({jobs} Clari jobs)",
            f"{rate:,.0f}",
            ">= 1,000",
            rate >= 1000,
            f"{rate / 1000:.0%} of target; results into tmpfs instead of this disk: "
            + (f"{tmpfs:,.0f} jobs/s, {tmpfs_info:,.0f} logging at INFO; " if tmpfs else "n/a; ")
            + f"this disk alone makes {files['files_per_s']:,.0f} result files/s durable "
            f"({files['cpu_us_per_file']:.0f} us CPU each); "
            f"plain aiohttp alone, the same POST + GET per job on this core, no ledger or "
            f"files: {floor['jobs_per_s']:,.0f} jobs/s; "
            f"raw sqlite3 ceiling {raw['raw_commits_per_s']:,.0f} "
            f"commits/s, {raw['raw_batched_inserts_per_s']:,.0f} batched inserts/s; "
            f"{out['ledger_ops_per_commit']:.1f} ledger ops per commit",
        ),
        row(
            3,
            "status requests per job (GET /export/jobs batching)",
            f"{per_job:.3f}",
            "<< 1",
            per_job < 0.1,
        ),
    ], out


def _tmpfs() -> Path | None:
    shm = Path("/dev/shm")  # noqa: S108 (only ever a private TemporaryDirectory inside it)
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


def file_ceiling(directory: Path, n: int, group: int = 100, size: int = 600) -> dict[str, float]:
    """Files/s of the daemon's commit sequence in plain Python on one thread: create, write,
    start writeback, then per group fsync each, rename each, fsync the directory. On ext4
    without a journal (this VM) creating files is slow where many were deleted in the last
    minutes (the allocator skips each recently freed inode), so this swings with what ran
    before; it is measured here so the end-to-end figure can be read against it."""
    directory.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    advise = getattr(os, "POSIX_FADV_DONTNEED", None)
    t0, c0 = time.perf_counter(), time.process_time()
    for start in range(0, n, group):
        fds = []
        for i in range(start, min(n, start + group)):
            fd = os.open(directory / f".f{i}.part", flags, 0o666)
            os.write(fd, data)
            if advise is not None:
                os.posix_fadvise(fd, 0, 0, advise)
            fds.append((fd, i))
        for fd, _ in fds:
            os.fsync(fd)
            os.close(fd)
        for _, i in fds:
            os.replace(directory / f".f{i}.part", directory / f"f{i}")
        dfd = os.open(directory, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"files_per_s": n / wall, "cpu_us_per_file": cpu / n * 1e6}


def b2_ledger() -> tuple[list[Row], dict[str, Any]]:
    out = ledger.run(5000)
    return [
        row(
            2,
            "durable ledger transitions/s (grouped)",
            f"{out['grouped_per_s']:,.0f}",
            ">= 5,000",
            out["grouped_per_s"] >= 5000,
        ),
        row(
            2,
            "grouped vs one-transaction-per-write ORM",
            f"{out['speedup']:.0f}x",
            ">= 10x",
            out["speedup"] >= 10,
            f"naive ORM {out['naive_orm_per_s']:,.0f}/s",
        ),
        _postgres_row(out),
    ], out


def _postgres_row(out: dict[str, Any]) -> Row:
    """The grouped path on PostgreSQL (127.0.0.1:5432, a scratch database), same run as SQLite."""
    pg, alt = out["grouped_postgres_asyncpg_per_s"], out["grouped_postgres_psycopg_per_s"]
    if pg is None:
        return row(2, "durable ledger transitions/s (grouped), PostgreSQL", "no server", "", False)
    return row(
        2,
        "durable ledger transitions/s (grouped), PostgreSQL",
        f"{pg:,.0f}",
        ">= 2,000",
        pg >= 2000,
        f"asyncpg; psycopg {alt:,.0f}/s; SQLite same run {out['grouped_per_s']:,.0f}/s "
        "(one round trip to the server per transition, one commit per group)",
    )


def b3_polling() -> tuple[list[Row], dict[str, Any]]:
    out = polling.run()
    spread = {}
    for sigma in (0.3, 0.8):
        history = polling.durations(polling.HISTORY_RUNS, 1, sigma=sigma)
        jobs = polling.durations(5000, 2, sigma=sigma)
        spread[sigma] = polling.ratio(jobs, polling.ours(jobs, history))
    out["ratio_by_sigma"] = {"0.3": spread[0.3], "0.5": out["ratio"], "0.8": spread[0.8]}
    _chart(out)
    others = out["ratio_other_histories"]
    return [
        row(
            3,
            "polls vs fixed interval at equal mean lag",
            f"{out['ratio']:.2f}x",
            "<= 0.70x",
            out["ratio"] <= 0.7,
            f"lognormal median 120 s, sigma 0.5, schedule learned from "
            f"{polling.HISTORY_RUNS} past runs; lag {out['ours_mean_lag_s']:.1f} s, "
            f"{out['ours_polls_per_job']:.1f} vs {out['fixed_polls_per_job']:.1f} polls/job; "
            f"best possible (true distribution known): {out['optimum_ratio']:.2f}x; "
            f"10 other histories: {min(others):.2f}-{max(others):.2f}x; "
            f"sigma 0.3: {spread[0.3]:.2f}x, sigma 0.8: {spread[0.8]:.2f}x",
        ),
        row(
            3,
            "10 s jobs detected within (no history)",
            f"{out['ten_second_jobs_no_history_max_lag_s']:.1f} s",
            "<= 3 s",
            out["ten_second_jobs_no_history_max_lag_s"] <= 3,
            f"with history: {out['ten_second_jobs_max_lag_s']:.2f} s",
        ),
    ], out


def _chart(out: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = polling.durations(polling.HISTORY_RUNS, 1)
    jobs = polling.durations(5000, 2)
    from orchestrator.backoff import poll_points

    fig, ax = plt.subplots(figsize=(7, 4.5))
    lags, polls = zip(*out["fixed_curve"], strict=True)
    ax.plot(lags, polls, "o-", label="fixed interval")
    ours = []
    for weight in (60, 100, 200, 300, 600, 1000, 2000):
        o = polling.ours(jobs, history, points=poll_points(history, weight))
        ours.append((o.lag, o.polls))
    ax.plot(
        *zip(*ours, strict=True),
        "s-",
        label=f"orchestrator (optimal schedule learned from {polling.HISTORY_RUNS} runs)",
    )
    ax.set_xlabel("mean detection lag (s)")
    ax.set_ylabel("status polls per job")
    ax.set_yscale("log")
    ax.set_title("Polling trade-off, lognormal durations (median 120 s, sigma 0.5)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / "polling.png", dpi=110)
    plt.close(fig)


def b4_slots(jobs: int = 200, rate: int = 20) -> tuple[list[Row], dict[str, Any]]:
    with (
        scratch() as d,
        Simulator(
            concurrent_limit=3,
            monthly_quota=10**9,
            queue_delay=0.02,
            duration=0.3,
            duration_sigma=0.5,
            result_rows=10,
        ) as sim,
    ):
        cfg = write_config(
            Path(d),
            sim.base,
            provider={
                "requests_per_second": rate,
                "poll": '{ initial = "0.05s", max_interval = "0.2s", min_interval = "0.01s" }',
            },
        )
        out = worker("slots", cfg, jobs)
        stats = sim.stats()
        remote = {j["jobId"]: j for j in sim.remote_jobs()}
    submit = {j: t for t, s, j in out["events"] if s == "SUBMITTING"}
    seen = {j: t for t, s, j in out["events"] if s == "FETCHING"}
    start, end = min(submit.values()), max(submit.values())
    window = end - start

    def overlap(a: float, b: float) -> float:
        return max(0.0, min(b, end) - max(a, start))

    held = sum(overlap(submit[j], seen.get(j, end)) for j in submit) / (3 * window)
    provider = 0.0
    for rid in out["remote"].values():
        r = remote.get(rid)
        if r and r.get("endTime"):
            provider += overlap(r["startTime"] / 1000, r["endTime"] / 1000)
    provider /= 3 * window
    seen_times = sorted(seen.values())
    refill = []
    for t in sorted(submit.values())[3:]:
        before = [s for s in seen_times if s <= t]
        if before:
            refill.append((t - before[-1]) * 1000)
    p95 = statistics.quantiles(refill, n=20)[-1] if len(refill) > 20 else max(refill)
    result = {
        "utilisation_held": held,
        "utilisation_provider": provider,
        "refill_ms_p50": statistics.median(refill),
        "refill_ms_p95": p95,
        "refill_ms_max": max(refill),
        "rejections": stats["rejected_limits"],
        "max_active": stats["max_active"],
        "max_requests_per_s": stats["max_requests_per_second"],
        "configured_rate": rate,
    }
    return [
        row(
            4,
            "slot-time used while backlog exists",
            f"{held:.1%}",
            ">= 99%",
            held >= 0.99,
            f"slot held from submit until DONE is seen; at the provider (until DONE): "
            f"{provider:.1%}, the rest is detection lag",
        ),
        row(
            4,
            "freed slot refilled after completion seen",
            f"p95 {p95:.0f} ms",
            "<= 50 ms",
            p95 <= 50,
            f"median {result['refill_ms_p50']:.0f} ms, max {result['refill_ms_max']:.0f} ms",
        ),
        row(
            4,
            "limit rejections / max concurrent",
            f"{stats['rejected_limits']} / {stats['max_active']}",
            "0 / 3",
            stats["rejected_limits"] == 0 and stats["max_active"] <= 3,
        ),
        row(
            4,
            "busiest 1-s window of requests",
            f"{stats['max_requests_per_second']}",
            f"<= {rate}",
            stats["max_requests_per_second"] <= rate,
        ),
    ], result


def b5_b7_inflight() -> tuple[list[Row], dict[str, Any]]:
    out: dict[str, Any] = {}
    rows: list[Row] = []
    for n, limit in ((10_000, 80), (100_000, 250)):
        with scratch() as d, Simulator() as sim:
            cfg = write_config(
                Path(d),
                sim.base,
                provider={"poll": '{ initial = "60s", max_interval = "60s" }'},
            )
            worker("seed", cfg, n)
            res = worker("inflight", cfg)
        out[str(n)] = res
        rows.append(
            row(
                5,
                f"peak RSS with {n:,} jobs in flight",
                f"{res['peak_rss_mib']:.0f} MiB",
                f"<= {limit} MiB",
                res["peak_rss_mib"] <= limit,
                f"imports alone {res['rss_before_mib']:.0f} MiB; steady "
                f"{res['rss_steady_mib']:.0f} MiB; {res['tracked']:,} tracked",
            )
        )
        if n == 10_000:
            rows.append(
                row(
                    7,
                    "ready with 10,000 non-terminal jobs",
                    f"{res['ready_s']:.2f} s",
                    "<= 2 s",
                    res["ready_s"] <= 2,
                    "ledger migrated, jobs scheduled",
                )
            )
    return rows, out


def disk_ceiling(directory: Path, size: int) -> float:
    """MiB/s of writing `size` bytes and fsyncing them on this disk: the download's ceiling."""
    buf = os.urandom(1 << 20)
    path = directory / "ceiling.bin"
    t0 = time.perf_counter()
    with path.open("wb") as f:
        for _ in range(size >> 20):
            f.write(buf)
        f.flush()
        os.fsync(f.fileno())
    rate = (size >> 20) / (time.perf_counter() - t0)
    path.unlink()
    return rate


def b6_download(size: int = 1 << 30) -> tuple[list[Row], dict[str, Any]]:
    with scratch() as d, Simulator(result_bytes=size, duration=0) as sim:
        ceiling = disk_ceiling(Path(d), size)
        res = worker("download", write_config(Path(d), sim.base))
        # The same download into memory-backed files: what the daemon itself can move when the
        # disk is not the bottleneck (this VM's disk speed swings 2x from run to run).
        shm = _tmpfs()
        if shm is not None:
            with tempfile.TemporaryDirectory(dir=shm) as out:
                (Path(d) / "tmpfs").mkdir()
                cfg = write_config(Path(d) / "tmpfs", sim.base, output_dir=Path(out))
                res["tmpfs"] = worker("download", cfg)
    res["disk_ceiling_mib_per_s"] = ceiling
    tmpfs = res.get("tmpfs", {}).get("mib_per_s")
    daemon_only = f"; into tmpfs (no disk): {tmpfs:.0f} MiB/s" if tmpfs else ""
    return [
        row(
            6,
            "RSS growth streaming 1 GiB",
            f"{res['rss_growth_mib']:.1f} MiB",
            "<= 8 MiB",
            res["rss_growth_mib"] <= 8,
        ),
        row(
            6,
            "download throughput (loopback, sha256, fsync)",
            f"{res['mib_per_s']:.0f} MiB/s",
            ">= 300 MiB/s",
            res["mib_per_s"] >= 300,
            f"this disk written then fsynced, same run: {ceiling:.0f} MiB/s (the download "
            f"overlaps writeback with receiving: {res['mib_per_s'] / ceiling:.0%} of it)"
            + daemon_only,
        ),
    ], res


def b9_replicas() -> tuple[list[Row], dict[str, Any]]:
    """Replicas on one PostgreSQL ledger (issue 16): jobs/s with 1 and 3 replicas over 3
    accounts, the same job set; takeover time after SIGKILL. The grouped transitions/s on
    PostgreSQL beside SQLite are bench 2's row."""
    out = replicas.run()
    if out["postgres"] is None:
        return [row(9, "replicas on PostgreSQL", "no server", "", False)], out
    one, three, take = out["one"], out["three"], out["takeover"]
    return [
        row(
            9,
            f"jobs/s end to end, 1 replica, {len(replicas.ACCOUNTS)} accounts, PostgreSQL",
            f"{one['jobs_per_s']:,.0f}",
            "",
            True,
            f"{one['jobs']:,} Clari exports (3 modules) over {', '.join(replicas.ACCOUNTS)} "
            "(one simulator, limits raised); first submission to last success",
        ),
        row(
            9,
            f"jobs/s end to end, 3 replicas, {len(replicas.ACCOUNTS)} accounts, PostgreSQL",
            f"{three['jobs_per_s']:,.0f}",
            ">= 1 replica's",
            three["jobs_per_s"] >= one["jobs_per_s"],
            f"{out['speedup']:.2f}x one replica, the same {three['jobs']:,} jobs; "
            f"{out['cores']} cores for the 3 daemons, the simulator and PostgreSQL",
        ),
        row(
            9,
            f"takeover after SIGKILL (lease {take['lease_s']:g} s), p50 / p95",
            f"{take['p50_s']:.2f} s / {take['p95_s']:.2f} s",
            "p95 <= lease",
            take["p95_s"] <= take["lease_s"],
            f"{take['takeovers']} accounts taken over after {take['kills']} kills; "
            f"max {take['max_s']:.2f} s (kill -> leases.acquired_at, the database's clock)",
        ),
    ], out


SUITE: list[tuple[str, Callable[[], tuple[list[Row], dict[str, Any]]]]] = [
    ("end_to_end", b1_end_to_end),
    ("ledger", b2_ledger),
    ("polling", b3_polling),
    ("slots", b4_slots),
    ("inflight", b5_b7_inflight),
    ("download", b6_download),
    ("imports", b8_imports),
    ("replicas", b9_replicas),
]


def main() -> int:
    from rich.console import Console
    from rich.table import Table

    RESULTS.mkdir(parents=True, exist_ok=True)
    only = set(sys.argv[1:])
    rows: list[Row] = []
    raw: dict[str, Any] = {}
    t0 = time.perf_counter()
    console = Console(width=200) if not Console().is_terminal else Console()
    for name, fn in SUITE:
        if only and name not in only:
            continue
        console.print(f"[bold]running {name}...[/bold]")
        r, data = fn()
        rows += r
        raw[name] = data
    rows.sort(key=lambda r: r["bench"])
    table = Table(title=f"orchestrator benchmarks ({platform.node()}, {time.strftime('%Y-%m-%d')})")
    for col in ("#", "what", "value", "target", "pass", "detail"):
        table.add_column(col, overflow="fold")
    for r in rows:
        mark = "[green]PASS[/green]" if r["pass"] else "[red]MISS[/red]"
        table.add_row(str(r["bench"]), r["what"], r["value"], r["target"], mark, r["detail"])
    console.print(table)
    elapsed = time.perf_counter() - t0
    console.print(f"suite took {elapsed:.0f} s; results in {RESULTS / 'latest.json'}")
    (RESULTS / "latest.json").write_text(
        json.dumps({"rows": rows, "raw": raw, "seconds": elapsed}, indent=2, default=str)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
