"""check-config's look at the environment `run` will meet: one `file:line: key: message` each."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

import pytest

from orchestrator.config import load_config
from orchestrator.preflight import check_environment

CONFIG = """\
[ledger]
url = "{url}"
[output]
dir = "{out}"
[web]
port = {port}
[providers.clari]
base_url = "https://api.clari.com/v4"
api_key = "k"
"""


def findings(tmp_path: Path, *, url: str = "", out: str = "results", port: int = 0) -> list[str]:
    conf = tmp_path / "orchestrator.toml"
    url = url or f"sqlite+aiosqlite:///{tmp_path}/ledger.db"
    conf.write_text(CONFIG.format(url=url, out=out, port=port))
    return [str(f) for f in check_environment(load_config(conf))]


def test_a_sound_environment_has_nothing_to_say(tmp_path: Path) -> None:
    assert findings(tmp_path, out="not/yet/made") == []
    assert not (tmp_path / "not").exists()  # checked, not created


def test_an_output_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "results").write_text("")
    conf = tmp_path / "orchestrator.toml"
    assert findings(tmp_path) == [
        f"{conf}:4: output.dir: {tmp_path}/results exists and is not a directory"
    ]
    assert findings(tmp_path, out="results/deeper") == [
        f"{conf}:4: output.dir: {tmp_path}/results/deeper cannot be created: "
        f"{tmp_path}/results is not a directory"
    ]


def test_a_ledger_whose_directory_cannot_be_made(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")
    (problem,) = findings(tmp_path, url=f"sqlite+aiosqlite:///{tmp_path}/state/x/ledger.db")
    assert problem.startswith(f"{tmp_path}/orchestrator.toml:2: ledger.url: ")
    assert problem.endswith(f"{tmp_path}/state is not a directory")


def test_the_synchronous_sqlite_driver(tmp_path: Path) -> None:
    (problem,) = findings(tmp_path, url=f"sqlite:///{tmp_path}/ledger.db")
    assert "ledger.url: sqlite:// is SQLite's synchronous driver" in problem
    assert "sqlite+aiosqlite:///" in problem


@pytest.mark.skipif(
    importlib.util.find_spec("asyncpg") is not None, reason="asyncpg is installed here"
)
def test_a_missing_postgres_driver_names_the_extra(tmp_path: Path) -> None:
    (problem,) = findings(tmp_path, url="postgresql+asyncpg://u@127.0.0.1:1/db")
    assert "ledger.url: the database driver is not installed" in problem
    assert "pip install 'orchestrator[postgres]'" in problem


def test_a_busy_port_is_a_warning(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        (warning,) = findings(tmp_path, port=port)
    assert warning.startswith(f"{tmp_path}/orchestrator.toml:6: web.port: warning: ")
    assert f"cannot listen on 127.0.0.1:{port}: in use" in warning
