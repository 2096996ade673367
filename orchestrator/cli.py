"""The `orchestrator` command. Thin: parse, call, print. Exit codes: 0 ok, 1 jobs failed,
2 usage or config error."""

from __future__ import annotations

import asyncio
import errno
import json
import sys
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from orchestrator import __version__
from orchestrator.config import Config, load_config
from orchestrator.domain import Job, JobState, Part, PartState
from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.ledger.store import Ledger, job_to_dict, part_to_dict, utcnow
from orchestrator.runtime import set_umask
from orchestrator.terminal import cell, printable

T = TypeVar("T")
STATES = [s.value for s in JobState]


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _load(path: str | None, *, secrets: bool = True) -> Config:
    """The config (and the process umask it sets), or exit 2 with its problems.
    `secrets=False` for commands that never talk to a provider: they work from an admin shell
    without the daemon's keys."""
    try:
        cfg = load_config(path, secrets=secrets)
    except ConfigError as exc:
        _fail(exc.problems)
    set_umask(cfg.daemon.umask)
    return cfg


def _fail(problems: list[str]) -> NoReturn:
    for line in problems:
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
@click.option("--json", "as_json", is_flag=True, help="With --once/--exit-when-idle: a summary.")
def run(
    config_path: str | None, once: bool, exit_when_idle: bool, verbose: bool, as_json: bool
) -> None:
    """Run the daemon. With --once or --exit-when-idle, a summary of the jobs this run finished
    follows: a table on a terminal, an object with --json."""
    cfg = _load(config_path)
    from orchestrator.preflight import check_environment

    if problems := [str(f) for f in check_environment(cfg, port=False) if not f.warning]:
        _fail(problems)
    if as_json and not (once or exit_when_idle):
        click.echo(
            "--json needs --once or --exit-when-idle (the daemon prints no summary)", err=True
        )
        sys.exit(2)
    _logging(verbose, level=cfg.daemon.log_level)
    from orchestrator.engine.daemon import Daemon

    started = utcnow()
    daemon = Daemon(
        cfg, once=once, exit_when_idle=exit_when_idle, install_signals=True, tune_gc=True
    )
    try:
        code = _run(daemon.run())
    except ConfigError as exc:  # the environment refused at start (a busy port, the ledger)
        _fail(exc.problems)
    if (once or exit_when_idle) and (as_json or sys.stdout.isatty()):
        _run_summary(cfg, started, code, as_json=as_json)
    sys.exit(code)


def _run_summary(cfg: Config, started: Any, code: int, *, as_json: bool) -> None:
    """The jobs that finished during this run (and any left unfinished)."""

    async def fetch(lg: Ledger) -> list[dict[str, Any]]:
        jobs = await lg.jobs_touched_since(started)
        return [job_to_dict(j) for j in jobs]

    rows = _with_ledger(cfg, fetch)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    if as_json:
        summary = {"exit_code": code, "jobs_by_state": counts, "jobs": rows}
        click.echo(json.dumps(summary, indent=2))
        return
    states = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no jobs"
    print_jobs_table(rows, title=f"run: {states}; results under {cfg.output.dir}")


@cli.command("check-config")
@config_option
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--online",
    is_flag=True,
    help="Also verify each provider's credentials with its cheapest call; show limits/credits.",
)
def check_config(config_path: str | None, as_json: bool, online: bool) -> None:
    """Validate the config file and what `run` needs around it (directories, database driver,
    secret files, the status port); exit 2 with file:line: message on errors. Warnings
    (file:line: warning: ...) leave the exit code 0."""
    from orchestrator.checks import config_warnings, online_quota_warnings
    from orchestrator.preflight import check_environment

    if as_json:
        try:
            cfg = load_config(config_path)
        except ConfigError as exc:
            click.echo(json.dumps({"ok": False, "problems": exc.problems}, indent=2))
            sys.exit(2)
        found = check_environment(cfg)
        summary: dict[str, Any] = {
            "ok": not any(not f.warning for f in found),
            "file": str(cfg.source),
            "providers": sorted(cfg.providers),
            "pipelines": [p.name for p in cfg.pipelines],
            "problems": [str(f) for f in found if not f.warning],
            "warnings": [str(f) for f in found if f.warning] + config_warnings(cfg),
        }
        if online:
            checks = _run(check_providers(cfg))
            summary["online"] = checks
            summary["ok"] = summary["ok"] and all(c["ok"] for c in checks.values())
            summary["warnings"] += online_quota_warnings(cfg, checks)
        click.echo(json.dumps(summary, indent=2))
        sys.exit(0 if summary["ok"] else 2)
    cfg = _load(config_path)
    found = check_environment(cfg)
    for finding in found:
        click.echo(str(finding), err=True)
    if any(not f.warning for f in found):
        sys.exit(2)
    for line in config_warnings(cfg):
        click.echo(line, err=True)
    click.echo(
        f"{cfg.source}: ok ({len(cfg.providers)} provider(s), {len(cfg.pipelines)} pipeline(s))"
    )
    if not online:
        return
    failed = False
    checks = _run(check_providers(cfg))
    for line in online_quota_warnings(cfg, checks):
        click.echo(line, err=True)
    for name, result in checks.items():
        if result["ok"]:
            info = ", ".join(f"{k}={v}" for k, v in result.items() if k != "ok")
            click.echo(f"  {name}: ok ({printable(info, newlines=False)})")
        else:
            failed = True
            error = printable(result["error"], newlines=False)
            click.echo(f"  {name}: FAILED: {error}", err=True)
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
        except Exception as exc:  # an answer the adapter could not make sense of: report it
            out[name] = {"ok": False, "error": unexpected_answer(name, exc)}
        finally:
            await adapter.close()
    return out


def unexpected_answer(name: str, exc: Exception) -> str:
    """One line for an answer an adapter failed on (a wrong shape, a JSON bomb): the type of
    failure only, since the exception's text may quote the answer."""
    return f"{name}: the provider's answer was not understood ({type(exc).__name__})"


# --- jobs ---------------------------------------------------------------------------------------


@cli.group()
def jobs() -> None:
    """Inspect and steer jobs in the ledger."""


def _with_ledger(
    cfg: Config, fn: Callable[[Ledger], Coroutine[Any, Any, T]], *, create: bool = True
) -> T:
    """Run `fn` on the (migrated) ledger. `create=False` for commands that only look: a SQLite
    ledger that does not exist is reported (the path is probably wrong), not made empty."""
    from orchestrator.preflight import sqlite_path

    path = sqlite_path(cfg.ledger.url)
    if not create and path is not None and not path.exists():
        _fail(
            [
                f"{cfg.where('ledger', 'url')}: ledger.url: no ledger at {path} "
                "(`orchestrator run` or `orchestrator db upgrade` creates it)"
            ]
        )

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
            *map(
                cell,
                (
                    j["id"],
                    j["pipeline"],
                    j["kind"],
                    j["state"],
                    j["attempts"],
                    j["result_rows"],
                    j["result_bytes"],
                    _fmt_duration(j),
                    (f"parts {j['parts']['done']}/{j['parts']['total']} " if j.get("parts") else "")
                    + (f"{j['import_summary']} " if j.get("import_summary") else "")
                    + (j["result_path"] or j["error"] or ""),
                ),
            )
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
    cfg = _load(config_path, secrets=False)
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

    rows = _with_ledger(cfg, fetch, create=False)
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
    """A live view of jobs in flight and the latest finished ones. Off a terminal (a pipe, a
    log file): one plain line per job as it appears or changes state."""
    cfg = _load(config_path, secrets=False)
    from rich.console import Console
    from rich.live import Live

    async def plain(lg: Ledger) -> None:
        seen: dict[int, str] = {}
        n = 0
        while True:
            for line in _watch_changes(await _watch_jobs(lg), seen):
                click.echo(printable(line, newlines=False))
            n += 1
            if iterations and n >= iterations:
                return
            await asyncio.sleep(interval)

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
        _with_ledger(cfg, watch if Console().is_terminal else plain, create=False)
    except KeyboardInterrupt:
        pass


async def _watch_jobs(lg: Ledger) -> list[Any]:
    from orchestrator.domain import IN_FLIGHT

    flight = await lg.list_jobs(states=sorted(IN_FLIGHT))
    waiting = await lg.list_jobs(states=[JobState.PENDING, JobState.RETRY_WAIT], limit=10)
    recent = await lg.list_jobs(
        states=[JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED], limit=10
    )
    return sorted([*flight, *waiting, *recent], key=lambda j: j.id)


def _watch_changes(jobs: list[Any], seen: dict[int, str]) -> list[str]:
    """`jobs watch` off a terminal: a line for each job shown for the first time or in a new
    state since the last look (`seen`: id → state, updated)."""
    out = []
    for job in jobs:
        state = job.state.value
        if seen.get(job.id) == state:
            continue
        before = seen.get(job.id)
        seen[job.id] = state
        d = job_to_dict(job)
        where = d["result_path"] or d["error"] or job.remote_id or ""
        change = f"{before} -> {state}" if before else state
        stamp = utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")
        out.append(f"{stamp} job {job.id} {job.pipeline} {change} {where}".rstrip())
    return out


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
            *map(
                cell,
                (
                    job.id,
                    job.pipeline,
                    job.state.value,
                    job.attempts,
                    age,
                    where if in_flight else (d["result_path"] or d["error"] or ""),
                ),
            )
        )
    return table


@jobs.command("show")
@config_option
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True)
def jobs_show(config_path: str | None, job_id: int, as_json: bool) -> None:
    """One job with its transitions."""
    cfg = _load(config_path, secrets=False)

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

    data = _with_ledger(cfg, get, create=False)
    if data is None:
        click.echo(f"no job {job_id}", err=True)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        if key not in ("transitions", "parts", "import"):
            click.echo(f"{key:>16}: {printable(value) if value is not None else ''}")
    if data.get("import"):
        _echo_import(data["import"])
    if data["parts"]:
        click.echo("           parts:")
        for part in data["parts"]:
            rows = ""
            if part["first_row"] is not None and part["row_count"] is not None:
                first = part["first_row"] + 1  # 1-based, as in error messages
                rows = f"rows {first}-{first + part['row_count'] - 1}"
            detail = printable(part["detail"] or "")
            remote = ""
            if part["remote_id"]:  # Claravine: the chunk's transaction uuid
                label = "transaction" if data["kind"].startswith("claravine.") else "remote"
                remote = f"{label} {printable(part['remote_id'], newlines=False)} "
            click.echo(f"  #{part['seq']:<4} {part['state']:<8} {rows:<20} {remote}{detail}")
    click.echo("     transitions:")
    for t in data["transitions"]:
        reason = printable(t["reason"] or "")
        click.echo(f"  {t['at']}  {t['from'] or '-':>10} -> {t['to']:<10} {reason}")


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
            click.echo(f"  {printable(line)}")


@jobs.command("retry")
@config_option
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True)
def jobs_retry(config_path: str | None, job_id: int, as_json: bool) -> None:
    """Run a FAILED or CANCELLED job again, as a new job with the same params."""
    cfg = _load(config_path, secrets=False)

    async def retry(lg: Ledger) -> int | str:
        job = await lg.get(job_id)
        if job is None:
            return f"no job {job_id}"
        if job.state not in (JobState.FAILED, JobState.CANCELLED):
            return f"job {job_id} is {job.state}; only FAILED or CANCELLED jobs can be retried"
        from orchestrator.checks import import_file_changed

        changed = await asyncio.to_thread(import_file_changed, job.params)
        if changed is not None:
            return f"job {job_id} cannot be retried: {changed}"
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

    result = _with_ledger(cfg, retry, create=False)
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
    cfg = _load(config_path, secrets=False)

    async def cancel(lg: Ledger) -> JobState | None:
        try:
            return await lg.request_cancel(job_id)
        except KeyError:
            return None

    state = _with_ledger(cfg, cancel, create=False)
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


async def _operator_decides(lg: Ledger, job_id: int, remote_id: str | None) -> str | None:
    """Conclude a SUBMITTING job whose outcome reconciliation could not prove: adopt the remote
    job the operator names, or submit again. A running daemon notices on its next look at the
    job (its reconcile pass) and polls the adopted job or frees the slot. None: done."""
    job = await lg.get(job_id)
    if job is None:
        return f"no job {job_id}"
    if job.state == JobState.RETRY_WAIT:  # between a staged job's looks (not while it runs)
        return await _operator_decides_part(lg, job, remote_id)
    if job.state != JobState.SUBMITTING:
        return f"job {job_id} is {job.state}; only a SUBMITTING job's outcome can be decided"
    try:
        if remote_id is None:
            await lg.transition(
                job,
                JobState.SUBMITTING,
                JobState.PENDING,
                reason="operator: resubmit (no remote job adopted)",
                refund_quota=True,
                attempts=max(0, job.attempts - 1),
                error=None,
            )
            return None
        owner = await lg.remote_owner(job.provider, remote_id)
        if owner is not None and owner != job_id:
            return f"remote job {remote_id} belongs to job {owner}"
        await lg.transition(
            job,
            JobState.SUBMITTING,
            JobState.RUNNING,
            reason=f"operator: adopted remote job {remote_id}",
            remote_id=remote_id,
            error=None,
        )
    except Exception as exc:  # moved meanwhile (the daemon decided it), or owned meanwhile
        return f"job {job_id} not changed: {exc}"
    return None


async def _operator_decides_part(lg: Ledger, job: Job, remote_id: str | None) -> str | None:
    """The same for a staged job waiting on a call whose outcome is unknown (a part SENDING:
    a clariBI generation): its next run uses the decision instead of looking again."""
    sending = [p for p in await lg.parts(job.id) if p.state == PartState.SENDING]
    if not sending:
        return f"job {job.id} is {job.state} with no call of unknown outcome to decide"
    part = sending[0]
    if remote_id is None:
        await lg.save_parts([Part(job_id=job.id, seq=part.seq, state=PartState.PENDING)])
        return None
    if remote_id in await lg.part_remote_ids(job.provider):
        return f"remote job {remote_id} belongs to another job's part"
    adopted = replace(
        part, state=PartState.RUNNING, remote_id=remote_id, detail="adopted by the operator"
    )
    await lg.save_parts([adopted])
    return None


def _decide(config_path: str | None, job_id: int, remote_id: str | None, as_json: bool) -> None:
    cfg = _load(config_path, secrets=False)
    problem = _with_ledger(cfg, lambda lg: _operator_decides(lg, job_id, remote_id), create=False)
    if problem is not None:
        click.echo(printable(problem), err=True)
        sys.exit(2)
    state = JobState.PENDING if remote_id is None else JobState.RUNNING
    state = _with_ledger(cfg, lambda lg: _state_of(lg, job_id), create=False) or state
    if as_json:
        click.echo(json.dumps({"id": job_id, "state": state.value, "remote_id": remote_id}))
    elif remote_id is None:
        click.echo(f"job {job_id} will be submitted again")
    else:
        click.echo(f"job {job_id} adopted remote job {printable(remote_id, newlines=False)}")


async def _state_of(lg: Ledger, job_id: int) -> JobState | None:
    job = await lg.get(job_id)
    return None if job is None else job.state


@jobs.command("adopt")
@config_option
@click.argument("job_id", type=int)
@click.argument("remote_id")
@click.option("--json", "as_json", is_flag=True)
def jobs_adopt(config_path: str | None, job_id: int, remote_id: str, as_json: bool) -> None:
    """Adopt REMOTE_ID as the remote job of a SUBMITTING job reconciliation could not decide."""
    _decide(config_path, job_id, remote_id, as_json)


@jobs.command("resubmit")
@config_option
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True)
def jobs_resubmit(config_path: str | None, job_id: int, as_json: bool) -> None:
    """Submit a SUBMITTING job reconciliation could not decide again (adopting nothing)."""
    _decide(config_path, job_id, None, as_json)


@cli.command()
@config_option
@click.argument("pipeline")
@click.option("--json", "as_json", is_flag=True)
def trigger(config_path: str | None, pipeline: str, as_json: bool) -> None:
    """Enqueue one run of PIPELINE now."""
    cfg = _load(config_path, secrets=False)
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
        from orchestrator.checks import empty_glob

        glob_ = empty_glob(p)
        if glob_ is not None:
            click.echo(f"nothing enqueued for {pipeline}: its source {glob_!r} matches no file")
        else:
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
    cfg = _load(config_path, secrets=not offline)
    from orchestrator.quota import quota_report

    report = _with_ledger(cfg, lambda lg: quota_report(cfg, lg, online=not offline), create=False)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

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

        def value(v: Any) -> Text:
            return cell("-" if v is None else v)

        table.add_row(
            cell(name),
            *map(
                value,
                (
                    r["monthly_quota"],
                    r["used"],
                    r["reserved"],
                    r["available"],
                    r["projected_30d"],
                    r["concurrency_limit"],
                    r["in_flight"],
                    r["credits_used_30d"],
                    f"{left} of {r['credits_limit']}" if left is not None else None,
                ),
            ),
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    console.print(table)
    for name, r in report.items():
        if r.get("quota_warning"):
            click.echo(f"warning: {name}: {r['quota_warning']}", err=True)


@cli.command()
@config_option
@click.option("--timeout", type=float, default=5.0, show_default=True)
def healthcheck(config_path: str | None, timeout: float) -> None:
    """Exit 0 if the running daemon's /healthz answers 200 (Docker HEALTHCHECK), else 1."""
    import urllib.error
    import urllib.request

    cfg = _load(config_path, secrets=False)
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
    cfg = _load(config_path, secrets=False)

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
        sims = SimulatorServer(Simulators.create(clari=clari), host=host, port=port)
        try:
            server = await sims.start()
        except OSError as exc:
            why = "in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
            _fail([f"simulate --host {host} --port {port}: cannot listen there: {why}"])
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
@click.option(
    "--config",
    "config_path",
    default=None,
    help="A demo config (make demo: config/demo.toml); default: the one shipped in the package.",
)
@click.option(
    "--dir",
    "directory",
    default=None,
    help="Where the shipped demo config, inbox, ledger and results go (default: a new temp dir).",
)
@click.option("--keep", is_flag=True, help="Keep the previous demo ledger and results.")
def demo(config_path: str | None, directory: str | None, keep: bool) -> None:
    """Simulator + daemon on the demo config: run every pipeline once and print a summary."""
    from orchestrator.demo import run_demo, unpack_demo

    if config_path is None:
        config_path = str(unpack_demo(directory))
        click.echo(f"demo config, inbox, ledger and results: {Path(config_path).parent}")
    sys.exit(run_demo(config_path, keep=keep))


# --- pipelines (issue 18) ------------------------------------------------------------------


def _console() -> Any:
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=200)


def _ago(iso_at: str | None) -> str:
    return "-" if iso_at is None else iso_at.replace("T", " ").removesuffix("Z")


@cli.group(invoke_without_command=True)
@config_option
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def pipelines(ctx: click.Context, config_path: str | None, as_json: bool) -> None:
    """Every pipeline: schedule, next fire, last run, last success, health. Reads the config
    and the ledger only (no provider secret is needed)."""
    if ctx.invoked_subcommand is not None:
        return
    cfg = _load(config_path, secrets=False)
    from orchestrator.pipelines import statuses

    rows = [s.to_dict() for s in _with_ledger(cfg, lambda lg: statuses(cfg, lg))]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title="pipelines")
    for col in ("name", "kind", "provider", "schedule", "next fire (UTC)", "last run"):
        table.add_column(col)
    for col in ("last success (UTC)", "failures", "health"):
        table.add_column(col)
    styles = {"ok": "green", "failing": "bold red", "late": "yellow", "idle": "dim"}
    for r in rows:
        last = r["last_run"]
        table.add_row(
            r["name"],
            r["kind"],
            r["provider"],
            (r["schedule"] or "-") + ("" if r["enabled"] else " (disabled)"),
            _ago(r["next_fire"]),
            f"{last['id']} {last['state']}" if last else "-",
            _ago(r["last_success_at"]),
            str(r["consecutive_failures"]),
            f"[{styles[r['health']]}]{r['health']}[/]",
        )
    _console().print(table)


@pipelines.command("show")
@config_option
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def pipelines_show(config_path: str | None, name: str, as_json: bool) -> None:
    """One pipeline, its next 5 fire times and the params its next run would be sent with
    (a dry run: nothing is enqueued or sent)."""
    cfg = _load(config_path, secrets=False)
    p = _pipeline_or_exit(cfg, name)
    from orchestrator.pipelines import import_preview, show, status_of

    async def get(lg: Ledger) -> dict[str, Any]:
        now = utcnow()
        runs = (await lg.pipeline_runs()).get(p.name)
        data = show(cfg, status_of(cfg, p, runs, now), now)
        files = await import_preview(lg, p, data["params"])
        if files is not None:
            data["source_files"] = files
        return data

    data = _with_ledger(cfg, get)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        if key in ("next_fires", "params", "last_run"):
            continue
        click.echo(f"{key:>22}: {'' if value is None else value}")
    last = data["last_run"]
    click.echo(
        f"{'last_run':>22}: "
        + (f"job {last['id']} {last['state']} {last['finished_at'] or ''}" if last else "")
    )
    click.echo(f"{'next_fires':>22}:")
    for fire in data["next_fires"]:
        click.echo(f"  {fire}")
    click.echo(f"params for {data['params_for']}:")
    click.echo(json.dumps(data["params"], indent=2))
    if "source_files" in data:
        new = [f for f in data["source_files"] if f["new"]]
        click.echo(f"source files: {len(data['source_files'])} found, {len(new)} not imported yet")
        for f in data["source_files"]:
            click.echo(f"  {'new ' if f['new'] else 'done'}  {f['file']}")


def _pipeline_or_exit(cfg: Config, name: str) -> Any:
    try:
        return cfg.pipeline(name)
    except KeyError:
        names = ", ".join(x.name for x in cfg.pipelines) or "none"
        click.echo(f"{cfg.source}: no pipeline {name!r} (pipelines: {names})", err=True)
        sys.exit(2)


@cli.command()
@config_option
@click.argument("pipeline")
@click.option("--from", "start", required=True, help="First fire time included (date or ISO).")
@click.option("--to", "end", required=True, help="End of the range, excluded (date or ISO).")
@click.option("--dry-run", is_flag=True, help="Say what would be enqueued; enqueue nothing.")
@click.option("--allow-quota", is_flag=True, help="Enqueue even below the quota reserve.")
@click.option("--json", "as_json", is_flag=True)
def backfill(
    config_path: str | None,
    pipeline: str,
    start: str,
    end: str,
    dry_run: bool,
    allow_quota: bool,
    as_json: bool,
) -> None:
    """Enqueue one job per fire time of PIPELINE's schedule in [--from, --to), each rendered for
    its fire time. A fire already enqueued (by the scheduler too) is skipped. A date or a time
    without an offset is in [daemon] timezone."""
    cfg = _load(config_path)
    p = _pipeline_or_exit(cfg, pipeline)
    from orchestrator import backfill as bf

    async def go(lg: Ledger) -> tuple[bf.Backfill, bool]:
        tz = cfg.daemon.timezone
        plan = await bf.plan(cfg, lg, p, bf.parse_when(start, tz), bf.parse_when(end, tz))
        plan.quota = await bf.check_quota(cfg, lg, plan) if plan.new else None
        refused = plan.quota is not None and not plan.quota.ok and not allow_quota
        if not dry_run and not refused:
            await bf.enqueue(lg, plan)
        return plan, refused

    try:
        plan, refused = _with_ledger(cfg, go)
    except bf.BackfillError as exc:
        click.echo(f"backfill {pipeline}: {exc}", err=True)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps({**plan.to_dict(dry_run=dry_run), "refused": refused}, indent=2))
    else:
        _print_backfill(plan, dry_run=dry_run, refused=refused)
    if refused:
        assert plan.quota is not None
        click.echo(plan.quota.refusal(), err=True)
        sys.exit(2)


def _print_backfill(plan: Any, *, dry_run: bool, refused: bool) -> None:
    d = plan.to_dict(dry_run=dry_run)
    note = " (--to clamped to now: later fires are the scheduler's)" if plan.clamped else ""
    click.echo(
        f"backfill {d['pipeline']} [{d['from']}, {d['to']}){note}: {len(d['fire_times'])} fire "
        f"time(s), {len(d['to_enqueue'])} to enqueue, {len(d['already_enqueued'])} already enqueued"
    )
    for fire in d["fire_times"]:
        click.echo(f"  {fire}  {'new' if fire in d['to_enqueue'] else 'already enqueued'}")
    if d["quota"] and d["quota"]["left"] is not None:
        q = d["quota"]
        click.echo(
            f"quota {q['provider']}: {q['left']} left, {q['queued']} queued, {q['needed']} "
            f"needed -> {q['left_after']} after (reserve {q['reserve']})"
        )
    if dry_run:
        click.echo("dry run: nothing enqueued")
    elif not refused:
        ids = ", ".join(map(str, d["job_ids"])) or "none"
        click.echo(f"{len(d['job_ids'])} job(s) enqueued: {ids}")


@cli.group()
def notify() -> None:
    """[[notify]] webhooks: test them, see the outbox."""


@notify.command("test")
@config_option
@click.option("--json", "as_json", is_flag=True)
def notify_test(config_path: str | None, as_json: bool) -> None:
    """Send one test notification to every [[notify]] webhook now; exit 1 if any failed."""
    cfg = _load(config_path)
    if not cfg.notify:
        click.echo(f"{cfg.source}: no [[notify]] webhook configured", err=True)
        sys.exit(2)
    from orchestrator.notify import Notifications

    async def go() -> dict[str, str | None]:
        n = Notifications(cfg, Ledger(cfg.ledger.url))
        try:
            return await n.send_test()
        finally:
            await n.close()
            await n.ledger.close()

    results = _run(go())
    if as_json:
        click.echo(
            json.dumps([{"url": u, "ok": e is None, "error": e} for u, e in results.items()])
        )
    else:
        for url, error in results.items():
            click.echo(f"{url}: " + ("sent" if error is None else f"FAILED: {error}"))
    sys.exit(0 if all(e is None for e in results.values()) else 1)


@notify.command("list")
@config_option
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def notify_list(config_path: str | None, limit: int, as_json: bool) -> None:
    """The newest notifications in the outbox: event, state, attempts, last error."""
    cfg = _load(config_path)
    from orchestrator.notify import outbox_dicts

    rows = outbox_dicts(cfg, _with_ledger(cfg, lambda lg: lg.outbox_list(limit)))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(
            f"{r['id']:>6} {r['created_at']} {r['event']:<12} {r['state']:<10} "
            f"attempts={r['attempts']} {r['url']} {r['text']}"
            + (f" (last error: {r['last_error']})" if r["last_error"] else "")
        )


@cli.command()
@config_option
@click.option("--dry-run", is_flag=True, help="Say what would go; delete nothing.")
@click.option("--json", "as_json", is_flag=True)
def prune(config_path: str | None, dry_run: bool, as_json: bool) -> None:
    """Apply [retention]: delete old result files and old finished jobs (never a pipeline's
    newest success, nor what a pending import will read). The daemon also does this daily."""
    cfg = _load(config_path, secrets=False)
    from orchestrator.retention import prune as do_prune

    report = _with_ledger(cfg, lambda lg: do_prune(cfg, lg, dry_run=dry_run)).to_dict()
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    if report["results_older_than_days"] is None and report["jobs_older_than_days"] is None:
        click.echo('nothing to prune: no [retention] set (e.g. results = "90d", jobs = "400d")')
        return
    verb = "would remove" if dry_run else "removed"
    size = report["result_bytes"] if dry_run else report["freed_bytes"]
    click.echo(
        f"{verb} {report['result_files']} result file(s) ({_size(size)}"
        f"{'' if dry_run else ' freed'}) and {report['jobs']} finished job(s)"
    )
    click.echo(
        f"kept: the newest success of {len(report['kept_newest_success'])} pipeline(s) among "
        f"the old, {len(report['kept_for_pending_import'])} result(s) a pending import reads, "
        f"{len(report['kept_import_source_exists'])} import job(s) whose source file still "
        "exists (their record stops a re-import)"
    )


@cli.command()
@config_option
@click.option("--json", "as_json", is_flag=True)
def replicas(config_path: str | None, as_json: bool) -> None:
    """The daemons sharing this ledger: id, host, pid, started, last heartbeat, and the provider
    accounts each holds (its leases); `lost` ones stopped renewing (their accounts are taken
    over within [ledger] lease)."""
    cfg = _load(config_path, secrets=False)
    from orchestrator.leasing import LeaseTimes
    from orchestrator.replicas import HEADERS, report, table_rows

    view = _with_ledger(cfg, lambda lg: report(lg, LeaseTimes(cfg.ledger.lease)), create=False)
    if as_json:
        click.echo(json.dumps(view, indent=2))
        return
    if not view["replicas"]:
        click.echo("no daemon has run on this ledger yet")
        return
    from rich.table import Table

    table = Table(*HEADERS, title=f"replicas (lease {cfg.ledger.lease:g}s)")
    for row in table_rows(view):
        table.add_row(*(printable(c) for c in row))
    _console().print(table)
    unowned = [lease["account"] for lease in view["leases"] if lease["owner"] is None]
    if unowned and any(r["state"] == "running" for r in view["replicas"]):
        click.echo(f"not held by any replica right now: {', '.join(unowned)}")


def _size(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KiB", "MiB"):
        if size < 1024:
            return f"{n} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def main() -> None:
    cli(prog_name="orchestrator")
