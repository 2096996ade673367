from __future__ import annotations

import os
import socket
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from orchestrator.config import Config, load_config
from orchestrator.ledger import testing as pg_testing
from orchestrator.simulator.claravine import ClaravineSimConfig
from orchestrator.simulator.clari import ClariSimConfig
from orchestrator.simulator.clari_ingest import IngestSimConfig
from orchestrator.simulator.claribi import ClariBISimConfig
from orchestrator.simulator.claro import ClaroSimConfig
from orchestrator.simulator.clayva import ClayvaSimConfig
from orchestrator.simulator.server import Simulators, SimulatorServer

API_KEY = "sim-key-Zq8XtP3vLw"
API_SECRET = "sim-secret-Hy7RkD2mQa"
CLARIBI_KEY = "claribi_sim-Wq4nVb8Lr2"
PARTNER_KEY = "sim-partner-Kp3sZ9xTe1"

# Property tests judge results, not speed: on a 2-core machine running the whole suite (or CI
# beside other work) an example can take longer than hypothesis's 200 ms default deadline.
settings.register_profile("orchestrator", deadline=None, print_blob=True)
settings.load_profile("orchestrator")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """A PostgreSQL server's admin conninfo; the test is skipped if none answers (a failure
    instead when $ORCHESTRATOR_REQUIRE_POSTGRES is set, as .ci/run sets it)."""
    try:
        return pg_testing.admin_conninfo()
    except pg_testing.NoServer as exc:
        if os.environ.get("ORCHESTRATOR_REQUIRE_POSTGRES"):
            pytest.fail(str(exc))
        pytest.skip(f"PostgreSQL tests skipped: {exc}")


@pytest.fixture(scope="module")
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A database of this test module's own (created empty, dropped after the module)."""
    with pg_testing.scratch_database(postgres_server) as url:
        yield url


@pytest.fixture
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The ledger `make_config` writes: SQLite in tmp_path, unless a test asks for PostgreSQL
    with `@BOTH_LEDGERS` (then a database of the test's own, dropped after it)."""
    dialect = getattr(request, "param", "sqlite")
    if dialect == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/ledger.db"
        return
    server: str = request.getfixturevalue("postgres_server")
    with pg_testing.scratch_database(server) as url:
        yield url.replace("postgresql://", f"{dialect}://", 1)


# Runs a test that uses `make_config` once on SQLite and once on PostgreSQL.
BOTH_LEDGERS = pytest.mark.parametrize(
    "ledger_url", ["sqlite", "postgresql+asyncpg"], indirect=True
)


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorServer]:
    clari = ClariSimConfig(api_key=API_KEY, duration=0.2, queue_delay=0.05)
    claro = ClaroSimConfig(api_key=API_KEY)
    claravine = ClaravineSimConfig(api_key=API_KEY, api_secret=API_SECRET)
    claribi = ClariBISimConfig(api_key=CLARIBI_KEY, generation_seconds=0.05)
    clayva = ClayvaSimConfig(api_key=API_KEY)
    ingest = IngestSimConfig(api_key=API_KEY, partner_key=PARTNER_KEY)
    sims = Simulators.create(
        clari=clari,
        claro=claro,
        claravine=claravine,
        claribi=claribi,
        clayva=clayva,
        clari_ingest=ingest,
    )
    server = await SimulatorServer(sims).start()
    try:
        yield server
    finally:
        await server.stop()


def toml_value(v: Any) -> str:
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    return str(v)


def write_config(
    tmp_path: Path,
    base_url: str,
    pipelines: list[dict[str, Any]],
    *,
    provider: dict[str, Any] | None = None,
    daemon: dict[str, Any] | None = None,
    api_key: str = API_KEY,
    providers: dict[str, dict[str, Any]] | None = None,
    ledger_url: str | None = None,
) -> Path:
    prov = {
        "base_url": base_url,
        "api_key": api_key,
        "retry_base": "0.05s",
        "poll": {"initial": "0.05s", "max_interval": "0.3s", "min_interval": "0.02s"},
        **(provider or {}),
    }
    dmn = {"retry_base": "0.1s", "retry_cap": "1s", "claim_interval": "0.1s", **(daemon or {})}
    lines = [
        "[ledger]",
        f'url = "{ledger_url or f"sqlite+aiosqlite:///{tmp_path}/ledger.db"}"',
        "[output]",
        f'dir = "{tmp_path}/results"',
        "[web]",
        "port = 0",
        "[daemon]",
        *(f"{k} = {toml_value(v)}" for k, v in dmn.items()),
        "[providers.clari]",
        *(f"{k} = {toml_value(v)}" for k, v in prov.items()),
    ]
    for name, extra in (providers or {}).items():
        lines.append(f"[providers.{name}]")
        merged = {"api_key": api_key, "retry_base": "0.05s", **extra}
        lines += [f"{k} = {toml_value(v)}" for k, v in merged.items()]
    for p in pipelines:
        lines.append("[[pipelines]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in p.items()]
    path = tmp_path / "orchestrator.toml"
    path.write_text(textwrap.dedent("\n".join(lines)) + "\n")
    return path


def forecast(name: str, **params: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "clari.forecast_export",
        "params": {"forecastId": "fc_1", "timePeriod": "2026_Q4", "exportFormat": "CSV", **params},
    }


@pytest.fixture
def make_config(tmp_path: Path, sim: SimulatorServer, ledger_url: str) -> Callable[..., Config]:
    def make(pipelines: list[dict[str, Any]], **kw: Any) -> Config:
        kw.setdefault("ledger_url", ledger_url)
        return load_config(write_config(tmp_path, sim.base_url("clari"), pipelines, **kw))

    return make
