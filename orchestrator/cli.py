"""The `orchestrator` command. Thin: parse, call, print. Exit codes: 0 ok, 1 jobs failed,
2 usage or config error."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click

from orchestrator import __version__
from orchestrator.config import Config, load_config
from orchestrator.domain import JobState
from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.ledger.store import Ledger, job_to_dict, part_to_dict, utcnow

T = TypeVar("T")
STATES = [s.value for s in JobState]


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _load(path: str | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        for line in exc.problems:
            click.echo(line, err=True)
        sys.exit(2)


def config_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--config",
        "config_path",
        envvar="ORCHESTRATOR_CONFIG",
        default=None,
        help="Config file (default: $ORCHESTRATOR_CONFIG, else ./orchestrator.toml).",
    )(f)


def _logging(verbose: bool, json_logs: bool | None = None, level: str = "INFO") -> None:
    from orchestrator.logging import configure

    configure(json=json_logs, level="DEBUG" if verbose else level)


@click.group()
@click.version_option(__version__)
def cli() -> None:
    """Bulk exports and imports on SaaS APIs, scheduled, rate-limited and never lost."""
    # Logs go to stderr only, so --json on stdout stays parseable; `run` raises the level.
    _logging(verbose=False, level="WARNING")


@cli.command()
@config_option
@click.option("--once", is_flag=True, help="Enqueue every pipeline once, work it off, exit.")
@click.option("--exit-when-idle", is_flag=True, help="Work off the ledger, then exit.")
@click.option("--verbose", "-v", is_flag=True)
def run(config_path: str | None, once: bool, exit_when_idle: bool, verbose: bool) -> None:
    """Run the daemon."""
    cfg = _load(config_path)
    _logging(verbose)
    from orchestrator.engine.daemon import Daemon

    daemon = Daemon(
        cfg, once=once, exit_when_idle=exit_when_idle, install_signals=True, tune_gc=True
    )
    code = _run(daemon.run())
    sys.exit(code)


@cli.command("check-config")
@config_option
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--online",
    is_flag=True,
    help="Also verify each provider's credentials with its cheapest call; show limits/credits.",
)
def check_config(config_path: str | None, as_json: bool, online: bool) -> None:
    """Validate the config file; exit 2 with file:line: message on errors."""
    if as_json:
        try:
            cfg = load_config(config_path)
        except ConfigError as exc:
            click.echo(json.dumps({"ok": False, "problems": exc.problems}, indent=2))
            sys.exit(2)
        summary: dict[str, Any] = {
            "ok": True,
            "file": str(cfg.source),
            "providers": sorted(cfg.providers),
            "pipelines": [p.name for p in cfg.pipelines],
        }
        if online:
            checks = _run(check_providers(cfg))
            summary["online"] = checks
            summary["ok"] = all(c["ok"] for c in checks.values())
        click.echo(json.dumps(summary, indent=2))
        sys.exit(0 if summary["ok"] else 2)
    cfg = _load(config_path)
    click.echo(
        f"{cfg.source}: ok ({len(cfg.providers)} provider(s), {len(cfg.pipelines)} pipeline(s))"
    )
    if not online:
        return
    failed = False
    for name, result in _run(check_providers(cfg)).items():
        if result["ok"]:
            info = ", ".join(f"{k}={v}" for k, v in result.items() if k != "ok")
            click.echo(f"  {name}: ok ({info})")
        else:
            failed = True
            click.echo(f"  {name}: FAILED: {result['error']}", err=True)
    sys.exit(2 if failed else 0)


CHECK_TIMEOUT = 30.0


async def check_providers(cfg: Config) -> dict[str, dict[str, Any]]:
    """Each configured provider's cheapest authenticated call: ok + what it reports, or the
    error (never a credential)."""
    from orchestrator.providers import PROVIDERS

    out: dict[str, dict[str, Any]] = {}
    for name, prov in cfg.providers.items():
        factory = PROVIDERS.get(name) or PROVIDERS.get(name.split("-", 1)[0])
        if factory is None:
            out[name] = {"ok": False, "error": f"no adapter for provider {name!r}"}
            continue
        adapter = factory(prov)
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                out[name] = {"ok": True, **await adapter.check()}
        except (OrchestratorError, TimeoutError) as exc:
            out[name] = {"ok": False, "error": str(exc) or f"no answer in {CHECK_TIMEOUT:g} s"}
        finally:
            await adapter.close()
    return out


# --- jobs ---------------------------------------------------------------------------------------


@cli.group()
def jobs() -> None:
    """Inspect and steer jobs in the ledger."""


def _with_ledger(cfg: Config, fn: Callable[[Ledger], Coroutine[Any, Any, T]]) -> T:
    async def go() -> T:
        from orchestrator.ledger import migrate

        ledger = Ledger(cfg.ledger.url)
        try:
            await migrate.upgrade(ledger)
            return await fn(ledger)
        finally:
            await ledger.close()

    return _run(go())


def _fmt_duration(job: dict[str, Any]) -> str:
    from datetime import datetime

    start, end = job.get("created_at"), job.get("finished_at")
    if not start:
        return ""
    t0 = datetime.fromisoformat(start.replace("Z", "+00:00"))
    t1 = datetime.fromisoformat(end.replace("Z", "+00:00")) if end else utcnow()
    return f"{(t1 - t0).total_seconds():.1f}s"


def print_jobs_table(rows: list[dict[str, Any]], title: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, expand=False)
    for col in ("id", "pipeline", "kind", "state", "attempts", "rows", "bytes", "duration"):
        table.add_column(col, no_wrap=True)
    table.add_column("path / error", overflow="fold")
    for j in rows:
        table.add_row(
            str(j["id"]),
            j["pipeline"],
            j["kind"],
            j["state"],
            str(j["attempts"]),
            "" if j["result_rows"] is None else str(j["result_rows"]),
            "" if j["result_bytes"] is None else str(j["result_bytes"]),
            _fmt_duration(j),
            (f"parts {j['parts']['done']}/{j['parts']['total']} " if j.get("parts") else "")
            + (f"{j['import_summary']} " if j.get("import_summary") else "")
            + (j["result_path"] or j["error"] or ""),
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    console.print(table)


@jobs.command("list")
@config_option
@click.option("--state", type=click.Choice(STATES, case_sensitive=False), multiple=True)
@click.option("--pipeline")
@click.option("--limit", type=int, default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def jobs_list(
    config_path: str | None, state: tuple[str, ...], pipeline: str | None, limit: int, as_json: bool
) -> None:
    """List jobs, newest first."""
    cfg = _load(config_path)
    states = [JobState(s.upper()) for s in state] or None

    async def fetch(lg: Ledger) -> list[dict[str, Any]]:
        found = await lg.list_jobs(states=states, pipeline=pipeline, limit=limit)
        progress = await lg.part_progress([j.id for j in found if not j.terminal])
        imports = await lg.import_progress([j.id for j in found])
        rows = [job_to_dict(j) for j in found]
        for row in rows:  # multi-part jobs in flight: how far along
            if row["id"] in progress:
                done, total = progress[row["id"]]
                row["parts"] = {"done": done, "total": total}
            if row["id"] in imports:  # imports: rows validated, sent, confirmed, rejected; ETA
                row["import"] = imports[row["id"]].to_dict()
                row["import_summary"] = imports[row["id"]].summary()
        return rows

    rows = _with_ledger(cfg, fetch)
    if as_json:
        for row in rows:
            row.pop("import_summary", None)
        click.echo(json.dumps(rows, indent=2))
    else:
        print_jobs_table(rows)


@jobs.command("watch")
@config_option
@click.option(
    "--interval", type=float, default=1.0, show_default=True, help="Seconds between refreshes."
)
@click.option("--iterations", type=int, default=0, help="Stop after N refreshes (0: until Ctrl-C).")
def jobs_watch(config_path: str | None, interval: float, iterations: int) -> None:
    """A live view of jobs in flight and the latest finished ones."""
    cfg = _load(config_path)
    from rich.console import Console
    from rich.live import Live

    async def watch(lg: Ledger) -> None:
        console = Console() if Console().is_terminal else Console(width=200)
        with Live(console=console, auto_refresh=False) as live:
            n = 0
            while True:
                live.update(await _watch_table(lg), refresh=True)
                n += 1
                if iterations and n >= iterations:
                    return
                await asyncio.sleep(interval)

    try:
        _with_ledger(cfg, watch)
    except KeyboardInterrupt:
        pass


async def _watch_table(lg: Ledger) -> Any:
    from rich.table import Table

    from orchestrator.domain import IN_FLIGHT

    counts = await lg.counts_by_state()
    flight = await lg.list_jobs(states=sorted(IN_FLIGHT))
    waiting = await lg.list_jobs(states=[JobState.PENDING, JobState.RETRY_WAIT], limit=10)
    recent = await lg.list_jobs(
        states=[JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED], limit=10
    )
    progress = await lg.part_progress([j.id for j in flight])
    imports = await lg.import_progress([j.id for j in flight])
    summary = "  ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "no jobs"
    table = Table(title=f"orchestrator jobs — {summary}")
    for col in ("id", "pipeline", "state", "attempt", "age", "remote id / result / error"):
        table.add_column(col, overflow="fold")
    for job in [*flight, *waiting, *recent]:
        d = job_to_dict(job)
        start = job.submitted_at or job.created_at
        end = job.finished_at or utcnow()
        age = f"{(end - start).total_seconds():.1f}s" if start else ""
        in_flight = job.state.value in ("SUBMITTING", "RUNNING", "FETCHING")
        where = job.remote_id or ""
        if in_flight and job.id in progress:
            where = "parts {}/{} done".format(*progress[job.id])
        if in_flight and job.id in imports:
            where = imports[job.id].summary()
        table.add_row(
            str(job.id),
            job.pipeline,
            job.state.value,
            str(job.attempts),
            age,
            where if in_flight else (d["result_path"] or d["error"] or ""),
        )
    return table


@jobs.command("show")
@config_option
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True)
def jobs_show(config_path: str | None, job_id: int, as_json: bool) -> None:
    """One job with its transitions."""
    cfg = _load(config_path)

    async def get(lg: Ledger) -> dict[str, Any] | None:
        job = await lg.get(job_id)
        if job is None:
            return None
        parts = [part_to_dict(p) for p in await lg.parts(job_id)]
        data = {**job_to_dict(job), "parts": parts, "transitions": await lg.transitions(job_id)}
        progress = (await lg.import_progress([job_id])).get(job_id)
        if progress is not None:  # an import: its counts, and the rejects it skipped
            data["import"] = {**progress.to_dict(), "rejects": list(progress.rejects)}
        return data

    data = _with_ledger(cfg, get)
    if data is None:
        click.echo(f"no job {job_id}", err=True)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        if key not in ("transitions", "parts", "import"):
            click.echo(f"{key:>16}: {value if value is not None else ''}")
    if data.get("import"):
        _echo_import(data["import"])
    if data["parts"]:
        click.echo("           parts:")
        for part in data["parts"]:
            rows = ""
            if part["first_row"] is not None and part["row_count"] is not None:
                first = part["first_row"] + 1  # 1-based, as in error messages
                rows = f"rows {first}-{first + part['row_count'] - 1}"
            detail = part["detail"] or ""
            click.echo(f"  #{part['seq']:<4} {part['state']:<8} {rows:<20} {detail}")
    click.echo("     transitions:")
    for t in data["transitions"]:
        click.echo(f"  {t['at']}  {t['from'] or '-':>10} -> {t['to']:<10} {t['reason'] or ''}")


def _echo_import(imp: dict[str, Any]) -> None:
    eta = imp["eta_seconds"]
    click.echo(
        f"          import: {imp['phase']}: {imp['rows_validated']:,} validated, "
        f"{imp['rows_sent']:,} sent, {imp['rows_confirmed']:,} confirmed, "
        f"{imp['rows_rejected']:,} rejected"
        + (f", {imp['rate_rows_per_s']:,} rows/s" if imp["rate_rows_per_s"] else "")
        + (f", ETA {eta}s" if eta else "")
    )
    if imp["rejects"]:
        shown = len(imp["rejects"])
        click.echo(
            f"         rejects: first {shown} of {imp['rows_rejected']:,} "
            f"(all in {imp['rejects_path'] or 'the side file'}):"
        )
        for line in imp["rejects"]:
            click.echo(f"  {line}")


@jobs.command("retry")
@config_option
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True)
def jobs_retry(config_path: str | None, job_id: int, as_json: bool) -> None:
    """Run a FAILED or CANCELLED job again, as a new job with the same params."""
    cfg = _load(config_path)

    async def retry(lg: Ledger) -> int | str:
        job = await lg.get(job_id)
        if job is None:
            return f"no job {job_id}"
        if job.state not in (JobState.FAILED, JobState.CANCELLED):
            return f"job {job_id} is {job.state}; only FAILED or CANCELLED jobs can be retried"
        n = len(await lg.transitions(job_id))
        new = await lg.enqueue(
            pipeline=job.pipeline,
            kind=job.kind,
            provider=job.provider,
            params=job.params,
            idempotency_key=f"retry:{job_id}:{n}:{utcnow().isoformat()}",
            fire_time=job.fire_time,
            max_attempts=job.max_attempts,
            reason=f"retry of job {job_id}",
            retry_of=job_id,
        )
        return new if new is not None else f"job {job_id} was already retried"

    result = _with_ledger(cfg, retry)
    if isinstance(result, str):
        click.echo(result, err=True)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps({"id": result, "retry_of": job_id, "state": "PENDING"}))
    else:
        click.echo(f"job {result} enqueued (retry of {job_id})")


@jobs.command("cancel")
@config_option
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True)
def jobs_cancel(config_path: str | None, job_id: int, as_json: bool) -> None:
    """Cancel a job; a running remote job is cancelled at the provider by the daemon."""
    cfg = _load(config_path)

    async def cancel(lg: Ledger) -> JobState | None:
        try:
            return await lg.request_cancel(job_id)
        except KeyError:
            return None

    state = _with_ledger(cfg, cancel)
    if state is None:
        click.echo(f"no job {job_id}", err=True)
        sys.exit(2)
    if as_json:
        ended = state in (JobState.SUCCEEDED, JobState.FAILED)
        click.echo(json.dumps({"id": job_id, "state": state.value, "cancel_requested": not ended}))
        sys.exit(2 if ended else 0)
    if state == JobState.CANCELLED:
        click.echo(f"job {job_id} cancelled")
    elif state in (JobState.SUCCEEDED, JobState.FAILED):
        click.echo(f"job {job_id} already ended {state}", err=True)
        sys.exit(2)
    else:
        click.echo(f"job {job_id} is {state}: the daemon will cancel it at the provider")


@cli.command()
@config_option
@click.argument("pipeline")
@click.option("--json", "as_json", is_flag=True)
def trigger(config_path: str | None, pipeline: str, as_json: bool) -> None:
    """Enqueue one run of PIPELINE now."""
    cfg = _load(config_path)
    try:
        p = cfg.pipeline(pipeline)
    except KeyError:
        names = ", ".join(x.name for x in cfg.pipelines) or "none"
        click.echo(f"{cfg.source}: no pipeline {pipeline!r} (pipelines: {names})", err=True)
        sys.exit(2)
    from orchestrator.scheduler import trigger_all

    ids = _with_ledger(cfg, lambda lg: trigger_all(lg, p))
    if as_json:
        first = ids[0] if ids else None
        state = "PENDING" if ids else None
        click.echo(json.dumps({"id": first, "ids": ids, "pipeline": pipeline, "state": state}))
    elif not ids:
        click.echo(f"nothing new for {pipeline}: every source file was already imported")
    elif len(ids) == 1:
        click.echo(f"job {ids[0]} enqueued for {pipeline}")
    else:
        click.echo(f"jobs {', '.join(map(str, ids))} enqueued for {pipeline} (one per new file)")


@cli.command()
@config_option
@click.option("--json", "as_json", is_flag=True)
@click.option("--offline", is_flag=True, help="Do not ask the providers for their limits.")
def quota(config_path: str | None, as_json: bool, offline: bool) -> None:
    """Per provider account: limits, used, reserved, projected use of the schedules."""
    cfg = _load(config_path)
    from orchestrator.quota import quota_report

    report = _with_ledger(cfg, lambda lg: quota_report(cfg, lg, online=not offline))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="quota (rolling 30 days)")
    for col in (
        "provider",
        "limit",
        "used",
        "reserved",
        "available",
        "projected 30d",
        "concurrency",
        "in flight",
        "credits used 30d",
        "credits left",
    ):
        table.add_column(col)
    for name, r in report.items():
        left = r["credits_remaining"]

        def cell(v: Any) -> str:
            return "-" if v is None else str(v)

        table.add_row(
            name,
            cell(r["monthly_quota"]),
            cell(r["used"]),
            cell(r["reserved"]),
            cell(r["available"]),
            cell(r["projected_30d"]),
            cell(r["concurrency_limit"]),
            cell(r["in_flight"]),
            cell(r["credits_used_30d"]),
            f"{left} of {r['credits_limit']}" if left is not None else "-",
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    console.print(table)


@cli.command()
@config_option
@click.option("--timeout", type=float, default=5.0, show_default=True)
def healthcheck(config_path: str | None, timeout: float) -> None:
    """Exit 0 if the running daemon's /healthz answers 200 (Docker HEALTHCHECK), else 1."""
    import urllib.error
    import urllib.request

    cfg = _load(config_path)
    host = "127.0.0.1" if cfg.web.host in ("0.0.0.0", "::", "") else cfg.web.host  # noqa: S104
    url = f"http://{host}:{cfg.web.port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            ok = resp.status == 200
    except (urllib.error.URLError, OSError) as exc:
        click.echo(f"unhealthy: {url}: {exc}", err=True)
        sys.exit(1)
    click.echo(f"{'healthy' if ok else 'unhealthy'}: {url}")
    sys.exit(0 if ok else 1)


@cli.group()
def db() -> None:
    """Ledger schema."""


@db.command("upgrade")
@config_option
def db_upgrade(config_path: str | None) -> None:
    """Apply migrations (also done by `run` at start)."""
    cfg = _load(config_path)

    async def noop(_: Ledger) -> None:
        return None

    _with_ledger(cfg, noop)
    click.echo(f"ledger at {cfg.ledger.url} is up to date")


@cli.command()
@click.option("--port", type=int, default=8765, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--duration", type=float, default=None, help="Median job duration (s).")
@click.option("--concurrent-limit", type=int, default=None)
@click.option("--monthly-quota", type=int, default=None)
def simulate(
    port: int,
    host: str,
    duration: float | None,
    concurrent_limit: int | None,
    monthly_quota: int | None,
) -> None:
    """Serve every provider's simulator on one port (POST /<prefix>/_sim/config to misbehave)."""
    from orchestrator.simulator.clari import ClariSimConfig
    from orchestrator.simulator.server import (
        INGEST_PREFIX,
        PREFIXES,
        Simulators,
        SimulatorServer,
    )

    clari = ClariSimConfig()
    if duration is not None:
        clari.duration = duration
    if concurrent_limit is not None:
        clari.concurrent_limit = concurrent_limit
    if monthly_quota is not None:
        clari.monthly_quota = monthly_quota

    async def serve() -> None:
        server = await SimulatorServer(Simulators.create(clari=clari), host=host, port=port).start()
        for name, prefix in PREFIXES.items():
            click.echo(f"{name}: http://{host}:{server.port}{prefix}")
        click.echo(f"clari ingest: http://{host}:{server.port}{INGEST_PREFIX}")
        try:
            await asyncio.Event().wait()
        finally:
            await server.stop()

    try:
        _run(serve())
    except KeyboardInterrupt:
        pass


@cli.command()
@config_option
@click.option("--keep", is_flag=True, help="Keep the previous demo ledger and results.")
def demo(config_path: str | None, keep: bool) -> None:
    """Simulator + daemon on config/demo.toml: run every pipeline once and print a summary."""
    from orchestrator.demo import run_demo

    sys.exit(run_demo(config_path or "config/demo.toml", keep=keep))


def main() -> None:
    cli(prog_name="orchestrator")
