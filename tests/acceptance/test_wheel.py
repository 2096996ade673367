"""The package as pip/pipx installs it: a wheel built from the source, installed into a fresh
venv outside the checkout and run from another directory. Every command works, the migrations
and the demo come with it, and relative paths in the config point from the config file.

(The fresh venv borrows this venv's site-packages for the dependencies, through a .pth line, so
nothing is downloaded; .pth files there, such as the editable install's, are not processed.)"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import API_KEY, forecast, write_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    skip = shutil.ignore_patterns("__pycache__", ".demo", "*.db", "*.db-*")
    for name in ("orchestrator", "migrations", "config"):
        shutil.copytree(ROOT / name, src / name, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", work / "dist", src], check=True, cwd=work)
    (wheel,) = (work / "dist").glob("orchestrator-*.whl")
    env = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", env], check=True)
    site = Path(
        subprocess.run(
            [
                env / "bin" / "python",
                "-c",
                "import sysconfig; print(sysconfig.get_path('purelib'))",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "dev_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [*pip, "--python", env / "bin" / "python", "install", "--no-deps", "--no-index", wheel],
        check=True,
    )
    yield env


def run(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ORCHESTRATOR_CONFIG")}
    return subprocess.run(
        [str(venv / "bin" / "orchestrator"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
        check=False,
    )


def test_every_command_from_another_directory(venv: Path, tmp_path: Path, simulator: str) -> None:
    where = subprocess.run(
        [
            venv / "bin" / "python",
            "-c",
            "import orchestrator, orchestrator_migrations as m; "
            "print(orchestrator.__file__, m.__file__)",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout.split()
    assert all(path.startswith(str(venv)) for path in where), where  # the wheel, not the checkout

    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    config = write_config(conf_dir, simulator, [forecast("f")], api_key=API_KEY)
    text = config.read_text()
    text = text.replace(
        f"sqlite+aiosqlite:///{conf_dir}/ledger.db", "sqlite+aiosqlite:///state/l.db"
    )
    config.write_text(text.replace(f'dir = "{conf_dir}/results"', 'dir = "results"'))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def ok(*args: str) -> str:
        proc = run(venv, *args, "--config", str(config), cwd=elsewhere)
        assert proc.returncode == 0, (args, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr
        return proc.stdout

    assert "ok" in ok("check-config")
    ok("db", "upgrade")
    assert (conf_dir / "state" / "l.db").is_file()  # beside the config, not in the cwd
    ok("run", "--once")
    (job,) = json.loads(ok("jobs", "list", "--json"))
    assert job["state"] == "SUCCEEDED"
    assert str(job["result_path"]).startswith(f"{conf_dir}/results/f/")
    assert json.loads(ok("quota", "--offline", "--json"))["clari"]["used"] == 1
    assert "enqueued" in ok("trigger", "f")
    assert [j["state"] for j in json.loads(ok("jobs", "list", "--json"))] == [
        "PENDING",
        "SUCCEEDED",
    ]
    assert list(elsewhere.iterdir()) == []

    # The alembic CLI on the shipped alembic.ini works too.
    ini = subprocess.run(
        [
            venv / "bin" / "python",
            "-c",
            "import orchestrator_migrations as m; print(m.ALEMBIC_INI)",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    db = tmp_path / "alembic.db"
    subprocess.run(
        [
            venv / "bin" / "python",
            "-m",
            "alembic",
            "-c",
            ini,
            "-x",
            f"url=sqlite+aiosqlite:///{db}",
            "upgrade",
            "head",
        ],
        check=True,
        cwd=elsewhere,
        capture_output=True,
    )
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (0,)


def test_demo_runs_without_a_checkout(venv: Path, tmp_path: Path) -> None:
    proc = run(venv, "demo", "--dir", str(tmp_path / "demo"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"demo config, inbox, ledger and results: {tmp_path / 'demo'}" in proc.stdout
    assert (tmp_path / "demo" / "demo-inbox" / "campaigns" / "campaigns.csv").is_file()
    assert (tmp_path / "demo" / ".demo" / "ledger.db").is_file()
    assert "FAILED" not in proc.stdout
