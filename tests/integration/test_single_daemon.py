"""One daemon per SQLite ledger: a second one is refused at start, naming the first; a killed
daemon leaves no lock behind."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.config import Config
from orchestrator.engine.daemon import Daemon
from orchestrator.ledger.single import DaemonLock, LedgerInUse, lock_path
from orchestrator.simulator.server import SimulatorServer
from tests.conftest import forecast


def _run_cli(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", "--exit-when-idle", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


async def test_a_second_daemon_on_a_sqlite_ledger_is_refused_naming_the_first(
    make_config: Callable[..., Config], sim: SimulatorServer
) -> None:
    cfg = make_config([forecast("f0")])
    if not cfg.ledger.url.startswith("sqlite"):
        pytest.skip("the single-daemon lock is SQLite's")
    assert cfg.source is not None
    first = Daemon(cfg)
    task = asyncio.create_task(first.run())
    await asyncio.wait_for(first.ready.wait(), 15)
    try:
        second = await asyncio.to_thread(_run_cli, cfg.source)
        assert second.returncode == 2, second.stderr
        assert "another daemon runs on this ledger" in second.stderr
        assert f"pid {os.getpid()}" in second.stderr
        assert "Traceback" not in second.stderr
        assert f"{cfg.source}:" in second.stderr  # names the file and the key's line
    finally:
        first.stop()
        await asyncio.wait_for(task, 15)
    after = await asyncio.to_thread(_run_cli, cfg.source)  # the lock went with the daemon
    assert after.returncode == 0, after.stderr


def test_the_lock_names_its_holder_and_is_refused_in_the_same_process(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db.daemon-lock"
    held = DaemonLock(path)
    held.acquire()
    try:
        with pytest.raises(LedgerInUse, match=rf"pid {os.getpid()} on \S+ since 20\d\d-"):
            DaemonLock(path).acquire()
    finally:
        held.release()
    again = DaemonLock(path)
    again.acquire()
    assert again.held
    again.release()
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_a_daemon_killed_with_sigkill_leaves_no_lock_behind(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db.daemon-lock"
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from orchestrator.ledger.single import DaemonLock\n"
        f"DaemonLock(Path({str(path)!r})).acquire()\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n"
    )
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
            with pytest.raises(LedgerInUse, match=f"pid {proc.pid}"):
                DaemonLock(path).acquire()
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
    deadline = time.monotonic() + 5
    lock = DaemonLock(path)
    while True:
        try:
            lock.acquire()
            break
        except LedgerInUse:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    lock.release()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite+aiosqlite:////var/lib/o/ledger.db", "/var/lib/o/ledger.db.daemon-lock"),
        ("sqlite+aiosqlite:///:memory:", None),
        ("sqlite+aiosqlite://", None),
        ("postgresql+asyncpg://u@db/ledger", None),
    ],
)
def test_lock_path(url: str, expected: str | None) -> None:
    got = lock_path(url)
    assert (str(got) if got is not None else None) == expected
