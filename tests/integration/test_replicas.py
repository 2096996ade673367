"""Replicas on one PostgreSQL ledger (issue 16): the accounts are spread over the live replicas,
every job is done once, a replica cut off from the ledger stops its calls before another takes
its accounts over — without a restart — and takes its share again when the ledger is back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.config import Config, load_config
from orchestrator.domain import JobState
from orchestrator.engine.daemon import Daemon
from orchestrator.ledger import testing as pg_testing
from orchestrator.ledger.store import Ledger
from orchestrator.scheduler import trigger
from orchestrator.simulator.claro import ClaroDataset
from orchestrator.simulator.server import SimulatorServer
from tests.conftest import CLARIBI_KEY, forecast, write_config
from tests.integration.helpers import all_jobs, assert_result_intact, start
from tests.integration.test_notify import Hook, hook  # noqa: F401 (the webhook fixture)

pytestmark = [pytest.mark.timeout(180)]
LEASE = 2.0
ACCOUNTS = ["clari", "claribi", "claro"]


class Proxy:
    """A TCP relay in front of PostgreSQL that can be cut (every connection dropped, nothing
    accepted) and restored: a replica losing its ledger, as a network partition does it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.listen_port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._relay, "127.0.0.1", self.listen_port or 0, reuse_address=True
        )
        self.listen_port = self._server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.cut()


def write(tmp_path: Path, sim: SimulatorServer, ledger_url: str, name: str) -> Config:
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    path = write_config(
        d,
        sim.base_url("clari"),
        [
            *(forecast(f"fc{i}", forecastId=f"fc_{i}") for i in range(4)),
            {"name": "bi", "kind": "claribi.report", "params": BI_PARAMS},
            {"name": "cl", "kind": "claro.dataset_export", "params": {"datasetId": "ds_r"}},
        ],
        providers={
            "claribi": {"base_url": sim.base_url("claribi"), "api_key": CLARIBI_KEY},
            "claro": {
                "base_url": sim.base_url("claro"),
                "poll": {"initial": "0.1s", "max_interval": "0.3s"},
            },
        },
        ledger_url=ledger_url,
    )
    text = path.read_text().replace("[ledger]\n", f'[ledger]\nlease = "{LEASE:g}s"\n', 1)
    text = text.replace(f"{d}/results", f"{tmp_path}/results")  # one shared output directory
    path.write_text(text)
    return load_config(path)


BI_PARAMS = {
    "template_id": "550e8400-e29b-41d4-a716-446655440010",
    "data_source_ids": ["123e4567-e89b-12d3-a456-426614174000"],
}


@pytest.fixture
def pg(postgres_server: str) -> Iterator[str]:
    """A database of the test's own (created empty, dropped after it)."""
    with pg_testing.scratch_database(postgres_server) as url:
        yield url.replace("postgresql://", "postgresql+asyncpg://", 1)


async def until(check: Callable[[], bool], timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


def split(a: Daemon, b: Daemon) -> bool:
    return (
        bool(a.ownership.held)
        and bool(b.ownership.held)
        and not (a.ownership.held & b.ownership.held)
        and a.ownership.held | b.ownership.held == set(ACCOUNTS)
    )


async def enqueue_all(cfg: Config) -> list[int]:
    ledger = Ledger(cfg.ledger.url)
    try:
        ids = [await trigger(ledger, p) for p in cfg.pipelines]
    finally:
        await ledger.close()
    return [i for i in ids if i is not None]


async def finish(cfg: Config, n: int, timeout: float = 60) -> list[Any]:
    async with asyncio.timeout(timeout):
        while True:
            jobs = await all_jobs(cfg)
            if len(jobs) >= n and all(j.state == JobState.SUCCEEDED for j in jobs):
                return jobs
            failed = [j for j in jobs if j.state == JobState.FAILED]
            assert not failed, [(j.id, j.error) for j in failed]
            await asyncio.sleep(0.1)


async def stop(*pairs: tuple[Daemon, asyncio.Task[int]]) -> None:
    for daemon, _ in pairs:
        daemon.stop()
    for _, task in pairs:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 20)


async def test_replicas_share_the_accounts_and_do_each_job_once(
    tmp_path: Path, sim: SimulatorServer, pg: str
) -> None:
    sim.sims.claro.config.datasets.append(ClaroDataset(id="ds_r", name="R", rows=300))
    cfg_a, cfg_b = write(tmp_path, sim, pg, "a"), write(tmp_path, sim, pg, "b")
    a, b = Daemon(cfg_a), Daemon(cfg_b)
    ta = await start(a)
    assert a.ownership.held == set(ACCOUNTS) and a.ownership.leader  # alone: every account
    tb = await start(b)
    try:
        # The first gives back its surplus once idle; the second takes it: 2 + 1.
        await until(lambda: split(a, b), 10 * LEASE, "the accounts to spread")
        assert sorted(len(d.ownership.held) for d in (a, b)) == [1, 2]
        assert a.ownership.leader != b.ownership.leader  # exactly one leads
        ids = await enqueue_all(cfg_a)
        jobs = await finish(cfg_a, len(ids))
        for job in jobs:
            if job.kind != "claro.dataset_export":
                assert_result_intact(job)
        # Each did the jobs of its own accounts, and no remote job was made twice.
        assert sum(a.ctx.stats.finished.values()) and sum(b.ctx.stats.finished.values())
        assert len(sim.sims.clari.jobs) == 4
        assert len(sim.sims.claribi.reports) == 1
        # `replicas --json` names both, each with its accounts.
        out = await asyncio.to_thread(
            CliRunner().invoke, cli, ["replicas", "--json", "--config", str(cfg_a.source)]
        )
        assert out.exit_code == 0, out.output
        view = json.loads(out.output)
        running = {r["id"]: r for r in view["replicas"] if r["state"] == "running"}
        assert set(running) == {a.ownership.me.id, b.ownership.me.id}
        assert sorted(running[a.ownership.me.id]["accounts"]) == sorted(a.ownership.held)
        assert {x["account"]: x["owner"] for x in view["leases"]}.keys() == set(ACCOUNTS)
    finally:
        await stop((a, ta), (b, tb))
    out = await asyncio.to_thread(
        CliRunner().invoke, cli, ["replicas", "--config", str(cfg_a.source)]
    )
    assert out.exit_code == 0 and "stopped" in out.output, out.output


async def test_a_replica_cut_off_from_the_ledger_stops_and_the_other_takes_over(
    tmp_path: Path, sim: SimulatorServer, pg: str
) -> None:
    sim.sims.claro.config.datasets.append(ClaroDataset(id="ds_r", name="R", rows=300))
    port = int(pg.rsplit(":", 1)[1].split("/", 1)[0])
    proxy = Proxy(port)
    await proxy.start()
    via_proxy = pg.replace(f":{port}/", f":{proxy.listen_port}/", 1)
    cfg_a, cfg_b = write(tmp_path, sim, via_proxy, "a"), write(tmp_path, sim, pg, "b")
    a, b = Daemon(cfg_a), Daemon(cfg_b)
    ta = await start(a)
    tb = await start(b)
    try:
        await until(lambda: split(a, b), 10 * LEASE, "the accounts to spread")
        await proxy.cut()
        t_cut = time.monotonic()
        # A stops every call of its accounts once it could not renew for `fence` seconds,
        # and B takes them only after they expire: never both at once.
        while b.ownership.held != set(ACCOUNTS):
            assert not (a.ctx.held or set()) & b.ownership.held, "two replicas held an account"
            assert time.monotonic() - t_cut < 3 * LEASE, "no takeover"
            await asyncio.sleep(0.02)
        took = time.monotonic() - t_cut
        assert not a.ownership.held and not a.ctx.held
        # The takeover is within the lease (plus one heartbeat of slack for a loaded machine).
        assert took <= LEASE + a.ownership.times.heartbeat, took
        # B alone finishes everything, A being cut off.
        ids = await enqueue_all(cfg_b)
        await finish(cfg_b, len(ids))
        assert len(sim.sims.clari.jobs) == 4 and len(sim.sims.claribi.reports) == 1
        # The ledger is back: A takes its share again, B gives its surplus back.
        await proxy.start()
        await until(lambda: split(a, b), 15 * LEASE, "the accounts to spread again")
    finally:
        await stop((a, ta), (b, tb))
        await proxy.stop()


async def test_a_scheduled_run_is_enqueued_once_whatever_replicas_fire_it(
    tmp_path: Path, sim: SimulatorServer, pg: str
) -> None:
    """Every replica runs the scheduler; each fire time still becomes one job."""
    sim.sims.claro.config.datasets.append(ClaroDataset(id="ds_r", name="R", rows=300))
    cfgs = []
    for name in ("a", "b", "c"):
        cfg = write(tmp_path, sim, pg, name)
        text = cfg.source.read_text().replace(
            'name = "fc0"\n', 'name = "fc0"\nschedule = "every 1s"\n', 1
        )
        cfg.source.write_text(text)
        cfgs.append(load_config(cfg.source))
    daemons = [Daemon(c) for c in cfgs]
    tasks = [await start(d) for d in daemons]
    try:
        await asyncio.sleep(4.5)
        assert all(d.scheduler.running for d in daemons)  # three schedulers fired
    finally:
        await stop(*zip(daemons, tasks, strict=True))
    jobs = [j for j in await all_jobs(cfgs[0]) if j.pipeline == "fc0"]
    fires = [j.fire_time for j in jobs]
    assert len(fires) >= 3
    assert len(set(fires)) == len(fires), sorted(f for f in fires if fires.count(f) > 1)


async def test_each_notification_is_sent_once_by_the_leader(
    tmp_path: Path,
    sim: SimulatorServer,
    pg: str,
    hook: Hook,  # noqa: F811 (the fixture imported above)
) -> None:
    """Three replicas, failing jobs on every account's turn: one webhook call per failure."""
    cfgs = []
    for name in ("a", "b", "c"):
        cfg = write(tmp_path, sim, pg, name)
        text = cfg.source.read_text().replace('name = "fc0"\n', 'name = "fc0"\nmax_attempts = 1\n')
        text = text.replace('forecastId = "fc_0"', 'forecastId = "no_such_forecast"', 1)
        text += f'[[notify]]\nurl = "{hook.url}"\non = ["failed"]\n'
        cfg.source.write_text(text)
        cfgs.append(load_config(cfg.source))
    bad = next(p for p in cfgs[0].pipelines if p.name == "fc0")
    daemons = [Daemon(c) for c in cfgs]
    tasks = [await start(d) for d in daemons]
    try:
        ledger = Ledger(cfgs[0].ledger.url)
        try:
            ids = [await trigger(ledger, bad) for _ in range(3)]
        finally:
            await ledger.close()
        await until(lambda: len(hook.bodies) >= 3, 30, "three failure notifications")
        await asyncio.sleep(1.0)  # time for a second sender, if there were one
        assert sum(d.ownership.leader for d in daemons) == 1
    finally:
        await stop(*zip(daemons, tasks, strict=True))
    assert sorted(b["job_id"] for b in hook.bodies) == sorted(ids)
