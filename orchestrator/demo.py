"""`orchestrator demo` / `make demo`: the simulator and the daemon on the demo config, every
pipeline run once, live progress, then a summary table.

`make demo` runs config/demo.toml of the checkout; an installed package runs its own copy
(package `orchestrator.examples`), unpacked with its inbox into a directory it names. The demo's
ledger and results go under `.demo/` beside the config file."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from importlib.abc import Traversable
from importlib.resources import files
from pathlib import Path

from orchestrator.config import Config, load_config
from orchestrator.errors import ConfigError
from orchestrator.ledger.store import job_to_dict
from orchestrator.simulator.server import PREFIXES, SimulatorServer


def _point_at(cfg: Config, server: SimulatorServer) -> None:
    for prov in cfg.providers.values():
        if prov.provider_type in PREFIXES:
            prov.base_url = server.base_url(prov.provider_type)


async def _progress(daemon: object, total_hint: int) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from orchestrator.engine.daemon import Daemon

    assert isinstance(daemon, Daemon)
    await daemon.ready.wait()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[states]}"),
        TimeElapsedColumn(),
        transient=False,
    ) as progress:
        task = progress.add_task("jobs", total=total_hint, states="")
        while True:
            counts = await daemon.ledger.counts_by_state()
            done = sum(counts.get(s, 0) for s in ("SUCCEEDED", "FAILED", "CANCELLED"))
            states = "  ".join(f"{k}={v}" for k, v in sorted(counts.items()))
            progress.update(
                task, total=max(total_hint, sum(counts.values())), completed=done, states=states
            )
            if daemon.ctx.stopping.is_set():
                break
            await asyncio.sleep(0.2)


async def _demo(cfg: Config) -> int:
    from orchestrator.cli import print_jobs_table
    from orchestrator.engine.daemon import Daemon
    from orchestrator.logging import configure

    configure(json=False, level="WARNING")
    server = await SimulatorServer().start()
    try:
        _point_at(cfg, server)
        daemon = Daemon(cfg, once=True)
        progress = asyncio.create_task(_progress(daemon, len(cfg.pipelines)))
        code = await daemon.run()
        await progress
        from orchestrator.ledger.store import Ledger

        ledger = Ledger(cfg.ledger.url)
        try:
            rows = [job_to_dict(j) for j in await ledger.list_jobs(oldest_first=True)]
        finally:
            await ledger.close()
        print_jobs_table(rows, title=f"demo: {len(rows)} jobs, results under {cfg.output.dir}")
        return code
    finally:
        await server.stop()


DEMO_FILES = ("demo.toml", "demo-inbox")


def unpack_demo(directory: str | Path | None = None) -> Path:
    """Copy the packaged demo config and its inbox into `directory` (a new temporary directory
    when None); return the config file's path."""
    target = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="orchestrator-demo-"))
    target.mkdir(parents=True, exist_ok=True)
    shipped = files("orchestrator.examples")
    for name in DEMO_FILES:
        _copy(shipped / name, target / name)
    return target / "demo.toml"


def _copy(src: Traversable, dst: Path) -> None:
    if src.is_dir():
        dst.mkdir(exist_ok=True)
        for child in src.iterdir():
            _copy(child, dst / child.name)
    elif src.name != "__init__.py":
        dst.write_bytes(src.read_bytes())


def run_demo(config_path: str, *, keep: bool = False) -> int:
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        for line in exc.problems:
            print(line)
        return 2
    if not keep:
        from orchestrator.preflight import sqlite_path

        shutil.rmtree(cfg.output.dir, ignore_errors=True)
        if (db := sqlite_path(cfg.ledger.url)) is not None:
            for suffix in ("", "-wal", "-shm"):
                db.with_name(db.name + suffix).unlink(missing_ok=True)
    return asyncio.run(_demo(cfg))
