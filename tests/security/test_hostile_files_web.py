"""Hostile files, config and the status server (issue 14, items 5-12): each bad input ends as
exit 2 with `file:line: message` or a job error, never a traceback; nothing from outside is
followed, written through, shown raw or served to a stranger."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from click.testing import CliRunner, Result
from structlog.testing import capture_logs

from orchestrator import web as web_module
from orchestrator.cli import cli
from orchestrator.config import load_config
from orchestrator.domain import JobState
from orchestrator.engine.daemon import Daemon
from orchestrator.imports.events import validate_events
from orchestrator.imports.records import validate_records
from orchestrator.imports.tables import validate_table
from orchestrator.ledger import migrate
from orchestrator.ledger.store import Ledger, utcnow
from orchestrator.outputs import AtomicFile, part_path, stitch
from orchestrator.providers import sources
from orchestrator.providers.sources import SourceError, check_source
from orchestrator.simulator.server import SimulatorServer
from tests.conftest import forecast, write_config
from tests.integration.helpers import all_jobs, run_once, start


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[MutableMapping[str, Any]]]:
    """What the modules under test log. Their module loggers may already be cached with the
    processor list of an earlier logging.configure() (the CLI's, in another test), which
    capture_logs cannot reach; fresh ones bind to the list it captures with."""
    for module in (sources, web_module):
        monkeypatch.setattr(module, "log", structlog.get_logger(module.__name__))
    with capture_logs() as entries:
        yield entries


def check_config(config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["check-config", "--config", str(config), *args])


def assert_config_error(result: Result, config: Path, words: str) -> None:
    """Exit 2, one `file:line: message` naming the problem, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    assert any(
        line.startswith(f"{config}:") and words in line for line in result.output.splitlines()
    ), result.output


PROVIDER = """
[providers.clari]
base_url = "https://api.clari.com/v4"
api_key = "k"
"""


# --- item 12: config that overflowed or recursed ----------------------------------------------


@pytest.mark.parametrize(
    "expr",
    ["day+999999999", "month_start+999999999999999", "week_start-99999999", "quarter+99999999999"],
)
def test_date_expression_out_of_range_is_a_config_error(tmp_path: Path, expr: str) -> None:
    config = tmp_path / "o.toml"
    config.write_text(
        PROVIDER + '[[pipelines]]\nname = "f"\nkind = "clari.forecast_export"\n'
        f'params = {{ forecastId = "{{{{ {expr} }}}}", timePeriod = "2026_Q4" }}\n'
    )
    assert_config_error(check_config(config), config, "out of range")


def test_interval_too_long_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "o.toml"
    config.write_text(
        PROVIDER + '[[pipelines]]\nname = "f"\nkind = "clari.forecast_export"\n'
        'schedule = "every 999999999999999999999d"\n'
        'params = { forecastId = "x", timePeriod = "2026_Q4" }\n'
    )
    assert_config_error(check_config(config), config, "the interval is too long")


@pytest.mark.parametrize(
    "duration",
    ["inf", '"' + "9" * 400 + 'd"', '"400d"', "1e300"],
    ids=["inf", "9e399d", "400d", "1e300"],
)
def test_endless_durations_are_config_errors(tmp_path: Path, duration: str) -> None:
    """An infinite timeout passed validation and then broke aiohttp's timers (ceil(inf))."""
    config = tmp_path / "o.toml"
    config.write_text(PROVIDER + f"timeout = {duration}\n")
    assert_config_error(check_config(config), config, "timeout: must be at most 366 days")


@pytest.mark.parametrize(
    "nest",
    [
        "params = { a = " + "[" * 100_000 + "]" * 100_000 + " }",
        "params = " + "{ a = " * 50_000 + "1" + " }" * 50_000,
        "params." + ".".join(["a"] * 5_000) + " = 1",
    ],
    ids=["arrays", "inline-tables", "dotted-keys"],
)
def test_toml_nested_100k_deep_is_a_config_error(tmp_path: Path, nest: str) -> None:
    config = tmp_path / "o.toml"
    config.write_text(
        PROVIDER + f'[[pipelines]]\nname = "f"\nkind = "clari.forecast_export"\n{nest}\n'
    )
    assert_config_error(check_config(config), config, "nested more than 32 levels deep")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (b'[ledger]\nurl = "\xff"\n', ":2: not UTF-8"),
        (b"providers = 3\n", "providers: Input should be a valid dictionary"),
        (b"pipelines = [1]\n", "pipeline '#1'"),
    ],
)
def test_malformed_config_shapes_are_config_errors(tmp_path: Path, text: bytes, words: str) -> None:
    config = tmp_path / "o.toml"
    config.write_bytes(text)
    assert_config_error(check_config(config), config, words)


# --- item 6: HTTPS for every non-loopback provider URL -----------------------------------------


@pytest.mark.parametrize("provider", ["clari", "claro", "claravine", "claribi", "clayva"])
@pytest.mark.parametrize("key", ["base_url", "ingest_base_url"])
def test_plain_http_to_another_host_is_refused_naming_the_key(
    tmp_path: Path, provider: str, key: str
) -> None:
    urls = {"base_url": "https://api.example.com/v1", key: "http://api.example.com/v1"}
    config = tmp_path / "o.toml"
    config.write_text(
        f"[providers.{provider}]\n"
        + "".join(f'{k} = "{v}"\n' for k, v in urls.items())
        + 'api_key = "k"\napi_secret = "s"\n'
    )
    result = check_config(config)
    assert_config_error(result, config, f"provider {provider!r}: {key}: plain http://")
    assert f"{config}:{2 if key == 'base_url' else 3}:" in result.output


# --- item 7: result temp files are created exclusively, never through a symlink ---------------


@pytest.mark.parametrize("size", [10, 1 << 20], ids=["in-memory", "spilled"])
async def test_a_symlink_planted_at_the_temp_name_is_not_written_through(
    tmp_path: Path, size: int
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    final = tmp_path / "results" / "p" / "x.csv"
    final.parent.mkdir(parents=True)
    tmp = part_path(final)
    tmp.symlink_to(victim)
    sink = AtomicFile(final).open()
    await sink.write(b"a" * size)
    await sink.commit()
    assert victim.read_bytes() == b"precious"
    assert final.read_bytes() == b"a" * size and not final.is_symlink()
    assert not tmp.exists() and not tmp.is_symlink()


def test_a_file_already_at_the_temp_name_is_replaced_not_written_into(tmp_path: Path) -> None:
    """A stale temp from a crash is simply replaced; a hard link planted there (another name
    of some other file) must not have that file truncated and overwritten."""
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    final = tmp_path / "x.csv"
    part_path(final).hardlink_to(victim)
    sink = AtomicFile(final, spill=0).open()
    sink.write_sync(b"new\n")
    sink.commit_sync()
    assert final.read_bytes() == b"new\n"
    assert victim.read_bytes() == b"precious"


def test_stitching_parts_does_not_follow_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    parts = []
    for i in range(2):
        parts.append(tmp_path / f"part{i}.csv")
        parts[-1].write_bytes(b"h\n" + f"{i}\n".encode())
    final = tmp_path / "out" / "x.csv"
    final.parent.mkdir()
    part_path(final).symlink_to(victim)
    stitch(parts, final, "csv")
    assert victim.read_bytes() == b"precious"
    assert final.read_bytes() == b"h\n0\n1\n"


# --- item 5: import sources: symlinks refused, file content never quoted -----------------------

SECRET = "sk_live_9f8e7d6c5b4a39281706"


def plant_inbox(tmp_path: Path) -> tuple[Path, Path]:
    """An inbox with one good file, a symlink to a key file, and a symlinked directory leading
    to the keys, as someone who may only drop files would set it up."""
    keys = tmp_path / "credentials"
    keys.mkdir()
    (keys / "clayva_key").write_text(SECRET + "\n")
    (keys / "clayva_key.jsonl").write_text(json.dumps({"event": "A", "userId": SECRET}) + "\n")
    inbox = tmp_path / "in"
    inbox.mkdir()
    good = inbox / "good.jsonl"
    good.write_text("".join(json.dumps({"event": "E", "userId": f"u{i}"}) + "\n" for i in range(3)))
    (inbox / "drop.jsonl").symlink_to("../credentials/clayva_key.jsonl")
    (inbox / "drop.csv").symlink_to("../credentials/clayva_key")  # the reproduction
    (inbox / "sub").symlink_to("../credentials", target_is_directory=True)
    return inbox, good


async def test_symlinked_sources_are_skipped_with_a_warning(
    tmp_path: Path, sim: SimulatorServer, logs: list[MutableMapping[str, Any]]
) -> None:
    inbox, good = plant_inbox(tmp_path)
    pipelines = [
        {"name": "ev", "kind": "clayva.events_import", "params": {"source": f"{inbox}/*.jsonl"}},
        {"name": "deep", "kind": "clayva.events_import", "params": {"source": f"{inbox}/*/*"}},
        {"name": "csv", "kind": "clayva.events_import", "params": {"source": f"{inbox}/*.csv"}},
    ]
    clayva = {"base_url": sim.base_url("clayva"), "requests_per_minute": 6000}
    cfg = load_config(
        write_config(tmp_path, sim.base_url("clari"), pipelines, providers={"clayva": clayva})
    )
    assert await run_once(cfg) == 0
    (job,) = await all_jobs(cfg)
    assert job.state == JobState.SUCCEEDED and job.params["file"] == str(good)
    assert sim.sims.clayva.stats["events"] == 3
    skipped = {e["path"]: e["reason"] for e in logs if e["event"] == "import_source_skipped"}
    assert "a symlink" in skipped[f"{inbox}/drop.jsonl"]
    assert "a symlink" in skipped[f"{inbox}/drop.csv"]
    assert "resolves outside" in skipped[f"{inbox}/sub/clayva_key"]
    assert SECRET.encode() not in (tmp_path / "ledger.db").read_bytes()


def _check(params: dict[str, Any]) -> bool:
    check_source(Path(str(params["file"])), params)
    return True


def test_a_source_swapped_for_a_symlink_after_the_scan_is_not_read(tmp_path: Path) -> None:
    inbox, good = plant_inbox(tmp_path)
    params = {"source": f"{inbox}/*.jsonl", "file": str(inbox / "drop.jsonl")}
    with pytest.raises(SourceError, match="is a symlink") as info:
        _check(params)
    assert SECRET not in str(info.value)
    outside = {"source": f"{inbox}/*/*", "file": str(inbox / "sub" / "clayva_key.jsonl")}
    with pytest.raises(SourceError, match="resolves outside") as info:
        _check(outside)
    assert SECRET not in str(info.value)
    fifo = inbox / "pipe.jsonl"
    os.mkfifo(fifo)  # would block a plain open() for ever
    with pytest.raises(SourceError, match="not a regular file"):
        _check({"source": f"{inbox}/*.jsonl", "file": str(fifo)})
    assert _check({"source": f"{inbox}/*.jsonl", "file": str(good)})


def _problems(parse: Callable[[Path], str], path: Path, text: str) -> str:
    path.write_text(text)
    try:
        return parse(path)
    except SourceError as exc:
        return str(exc)


def parse_events(path: Path) -> str:
    rejects: list[str] = []
    validate_events(path, 100, reject=rejects.append)
    return "\n".join(rejects)  # Clayva: rejects


def parse_rows(path: Path) -> str:
    validate_table(path, 100)
    return ""


def parse_records(path: Path) -> str:
    validate_records(path, 10 << 20)
    return ""


@pytest.mark.parametrize(
    ("parse", "name", "text", "where"),
    [
        (parse_events, "k.csv", f"{SECRET}\n", ":1: column 1 is not a known one"),
        (parse_events, "k.jsonl", f'{{"event":"A","userId":"u","timestamp":"{SECRET}"}}', ":1:"),
        (parse_rows, "k.csv", f"{SECRET},{SECRET}\na,b\n", ":1: header has repeated column"),
        (parse_rows, "k.jsonl", f'{{"a":1}}\n{{"{SECRET}":1}}\n', ":2: keys differ"),
        (
            parse_records,
            "k.json",
            json.dumps([{"sourceEntity": SECRET, "records": [{"id": "1"}]}]),
            "block 1 record 1",
        ),
        (
            parse_records,
            "k.jsonl",
            "".join(
                json.dumps({"sourceEntity": "E", "id": SECRET, "createdAt": T, "updatedAt": T})
                + "\n"
                for T in (1_700_000_000_000, 1_700_000_000_000)
            ),
            "k.jsonl:2: same sourceEntity and id as",
        ),
    ],
    ids=["clayva-csv", "clayva-jsonl", "claravine-csv", "claravine-jsonl", "ingest", "ingest-ids"],
)
def test_import_errors_locate_the_problem_without_quoting_the_file(
    tmp_path: Path, parse: Callable[[Path, str], Any], name: str, text: str, where: str
) -> None:
    message = _problems(parse, tmp_path / name, text)
    assert where in message
    assert SECRET not in message


# --- items 9 and 11: provider text on the terminal; check-config --online on a bad answer -------

# Retitles the window, clears the screen, rings, hides a line behind a carriage return, and
# (for rich) opens markup and a link.
HOSTILE_TEXT = (
    "\x1b]0;pwned\x07\x1b[2J\x1b[Hboom\r\x1b[31m[bold red]fake OK[/bold red] "
    "[link=https://evil.example]click[/link]\x9b2J\u202egnp.exe"
)
HOSTILE_HTML = "<script>alert(1)</script>"
HOSTILE_ID = "<img src=x onerror=alert(2)>"


def assert_shown_not_obeyed(text: str) -> None:
    assert not set(text) & {"\x1b", "\x07", "\r", "\x9b", "\u202e"}, repr(text)
    assert "[bold red]fake OK[/bold red]" in text  # shown as written, not rendered


class FakeProvider:
    """A provider on loopback that answers every request with one status and body."""

    def __init__(self) -> None:
        self.status = 200
        self.body = b"{}"

    async def handle(self, _: web.Request) -> web.Response:
        return web.Response(status=self.status, body=self.body, content_type="application/json")


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeProvider, str]]:
    provider = FakeProvider()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", provider.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield provider, f"http://127.0.0.1:{runner.addresses[0][1]}/v4"
    finally:
        await runner.cleanup()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, b'["not", "an", "object"]'),
        (200, b"[" * 200_000 + b"]" * 200_000),
        (200, b'{"concurrentLimit": {"deep": []}, "monthlyQuota": "many"}'),
        (401, json.dumps({"code": "unauthorized", "message": HOSTILE_TEXT}).encode()),
    ],
    ids=["wrong-shape", "json-bomb", "wrong-types", "escapes-in-error"],
)
async def test_check_config_online_on_a_bad_answer_is_one_line_and_exit_2(
    tmp_path: Path, fake: tuple[FakeProvider, str], status: int, body: bytes
) -> None:
    provider, url = fake
    provider.status, provider.body = status, body
    config = write_config(tmp_path, url, [], provider={"retries": 0})
    out = await asyncio.to_thread(run_cli, "check-config", "--online", "--config", str(config))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    (line,) = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert line.startswith("  clari: FAILED: ")
    if status == 401:
        assert_shown_not_obeyed(line)


async def plant_hostile_job(config: Path) -> None:
    """A failed job and a running one whose error, reasons and remote id came from a provider."""
    cfg = load_config(config)
    ledger = Ledger(cfg.ledger.url)
    try:
        await migrate.upgrade(ledger)
        for key in ("a", "b"):
            job_id = await ledger.enqueue(
                pipeline="f",
                kind="clari.forecast_export",
                provider="clari",
                params={"forecastId": "x"},
                idempotency_key=key,
                fire_time=None,
                max_attempts=1,
            )
            assert job_id is not None
            await ledger.transition(job_id, JobState.PENDING, JobState.SUBMITTING)
            if key == "a":
                await ledger.transition(
                    job_id,
                    JobState.SUBMITTING,
                    JobState.FAILED,
                    reason=HOSTILE_TEXT,
                    error=HOSTILE_TEXT + HOSTILE_HTML + HOSTILE_ID,
                    finished_at=utcnow(),
                )
            else:
                await ledger.transition(
                    job_id,
                    JobState.SUBMITTING,
                    JobState.RUNNING,
                    remote_id=HOSTILE_TEXT + HOSTILE_ID,
                )
    finally:
        await ledger.close()


@pytest.mark.parametrize(
    "command",
    [
        ("jobs", "list"),
        ("jobs", "show", "1"),
        ("jobs", "show", "2"),
        ("jobs", "watch", "--iterations", "1"),
    ],
    ids=" ".join,
)
async def test_provider_text_is_shown_not_obeyed(tmp_path: Path, command: tuple[str, ...]) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:1/v4", [])
    await plant_hostile_job(config)
    out = await asyncio.to_thread(run_cli, *command, "--config", str(config))
    assert out.returncode == 0, out.stderr
    assert_shown_not_obeyed(out.stdout)


# --- item 10: the status server answers only to its own name, with the token, inertly ----------

TOKEN = "status-token-Xk29fLq7Rw"


@contextlib.asynccontextmanager
async def running_daemon(
    tmp_path: Path, sim: SimulatorServer, web_conf: str = ""
) -> AsyncIterator[tuple[Daemon, str]]:
    config = write_config(tmp_path, sim.base_url("clari"), [])
    config.write_text(
        config.read_text().replace("[web]\nport = 0\n", f"[web]\nport = 0\n{web_conf}")
    )
    cfg = load_config(config)
    await plant_hostile_job(config)
    daemon = Daemon(cfg)
    task = await start(daemon)
    try:
        yield daemon, f"http://127.0.0.1:{daemon.web.port}"
    finally:
        daemon.stop()
        assert await asyncio.wait_for(task, 15) == 0


async def get(url: str, **headers: str) -> tuple[int, dict[str, str], str]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as r:
        return r.status, dict(r.headers), await r.text()


async def test_the_status_server_answers_only_to_its_own_names(
    tmp_path: Path, sim: SimulatorServer
) -> None:
    async with running_daemon(tmp_path, sim, 'allowed_hosts = ["status.example.net"]\n') as (
        daemon,
        base,
    ):
        port = daemon.web.port
        for path in ("/", "/api/jobs", "/metrics"):
            for host in (
                "rebound.attacker.example",
                f"rebound.attacker.example:{port}",
                "10.1.2.3",
            ):
                status, _, body = await get(base + path, Host=host)
                assert status == 421 and "forecastId" not in body, (path, host)
            for host in (f"127.0.0.1:{port}", f"localhost:{port}", "status.example.net"):
                assert (await get(base + path, Host=host))[0] == 200, (path, host)
        for probe in ("/healthz", "/readyz"):  # probes come by any name
            assert (await get(base + probe, Host="rebound.attacker.example"))[0] == 200


async def test_the_page_and_api_need_the_token_and_the_probes_do_not(
    tmp_path: Path, sim: SimulatorServer, logs: list[MutableMapping[str, Any]]
) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    basic = "Basic " + base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
    async with running_daemon(tmp_path, sim, f'token_file = "{tmp_path}/token"\n') as (_, base):
        for path in ("/", "/api/jobs", "/metrics"):
            status, headers, body = await get(base + path)
            assert status == 401 and "forecastId" not in body
            assert "Bearer" in headers["WWW-Authenticate"]
            for wrong in ("Bearer nope", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN):
                assert (await get(base + path, Authorization=wrong))[0] == 401, wrong
            assert (await get(base + path, Authorization=f"Bearer {TOKEN}"))[0] == 200
            assert (await get(base + path, Authorization=basic))[0] == 200
        for probe in ("/healthz", "/readyz"):
            assert (await get(base + probe))[0] == 200
    assert any(e["event"] == "status_server_started" for e in logs)  # the capture works
    assert TOKEN not in repr(logs)


async def test_the_page_of_hostile_job_text_is_inert(tmp_path: Path, sim: SimulatorServer) -> None:
    async with running_daemon(tmp_path, sim) as (_, base):
        for path in ("/", "/api/jobs", "/healthz", "/nowhere"):
            _, headers, _ = await get(base + path)
            csp = headers["Content-Security-Policy"]
            assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
            assert "script-src" not in csp
            assert headers["X-Frame-Options"] == "DENY"
            assert headers["X-Content-Type-Options"] == "nosniff"
            assert headers["Referrer-Policy"] == "no-referrer"
        status, _, page = await get(base + "/")
        assert status == 200
        assert "<script>" not in page and "<img" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the error, shown as text
        assert "&lt;img src=x onerror=alert(2)&gt;" in page


# --- item 8: files the daemon makes are private unless configured otherwise ---------------------


@pytest.mark.parametrize(
    ("umask", "file", "directory"), [(None, 0o600, 0o700), ("027", 0o640, 0o750)]
)
async def test_a_real_run_creates_private_files_whatever_umask_it_inherits(
    tmp_path: Path, sim: SimulatorServer, umask: str | None, file: int, directory: int
) -> None:
    daemon = {"umask": umask} if umask else {}
    config = write_config(tmp_path, sim.base_url("clari"), [forecast("f")], daemon=daemon)
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "orchestrator", "run", "--once", "--config", str(config)],
        capture_output=True,
        timeout=60,
        check=False,
        umask=0o022,  # a usual login umask: files 0644
    )
    assert out.returncode == 0, out.stderr
    (result,) = (tmp_path / "results").rglob("*.csv")
    created = [tmp_path / "ledger.db", result]
    created += tmp_path.glob("ledger.db-*")  # WAL and shared memory, if still there
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in created} == {
        p.name: oct(file) for p in created
    }
    dirs = [tmp_path / "results", result.parent]
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in dirs} == {
        p.name: oct(directory) for p in dirs
    }


async def test_results_and_ledger_get_explicit_modes_when_embedded(tmp_path: Path) -> None:
    """A library caller (this test session) never set the umask: the modes are explicit."""
    old = os.umask(0o022)
    try:
        sink = AtomicFile(tmp_path / "results" / "p" / "x.csv").open()
        await sink.write(b"a\n")
        await sink.commit()
        ledger = Ledger(f"sqlite+aiosqlite:///{tmp_path}/state/ledger.db")
        await migrate.upgrade(ledger)
        await ledger.close()
    finally:
        os.umask(old)
    mode = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in tmp_path.rglob("*")}
    assert mode == {
        "results": "0o700",
        "p": "0o700",
        "x.csv": "0o600",
        "state": "0o700",
        "ledger.db": "0o600",
    } | {p.name: "0o600" for p in tmp_path.glob("state/ledger.db-*")}


def test_a_glob_with_a_nul_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "o.toml"
    config.write_text(
        '[providers.clayva]\nbase_url = "https://x.example"\napi_key = "k"\n'
        '[[pipelines]]\nname = "e"\nkind = "clayva.events_import"\n'
        'params = { source = "/srv/in\\u0000box/*.csv" }\n'
    )
    assert_config_error(check_config(config), config, "source has a control character")


async def test_a_status_server_reachable_from_the_network_without_a_token_is_warned_about(
    tmp_path: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    cfg = load_config(write_config(tmp_path, "http://127.0.0.1:1/v4", []))
    daemon = Daemon(cfg)
    (tmp_path / "token").write_text(TOKEN)
    any_address = "0.0.0.0"  # noqa: S104 (an ephemeral port, for a moment)
    for host, token_file, warned in (
        ("127.0.0.1", None, False),
        (any_address, None, True),
        (any_address, tmp_path / "token", False),
    ):
        daemon.cfg.web.token_file = token_file
        logs.clear()
        await daemon.web.start(host, 0)
        await daemon.web.stop()
        events = [e["event"] for e in logs]
        assert "status_server_started" in events
        assert ("status_server_without_token" in events) is warned, (host, token_file)
        assert TOKEN not in repr(logs)
    await daemon.ledger.close()


def test_a_source_bigger_than_max_source_bytes_fails_its_job_unread(tmp_path: Path) -> None:
    """Parsed whole, a dropped multi-GiB file would take the daemon down on every restart."""
    inbox, good = plant_inbox(tmp_path)
    big = inbox / "big.jsonl"
    big.write_text(good.read_text() * 200)
    params = {"source": f"{inbox}/*.jsonl", "file": str(big), "maxSourceBytes": 4096}
    with pytest.raises(SourceError, match=r"larger than maxSourceBytes \(4,096 bytes\)"):
        _check(params)
    assert _check({**params, "file": str(good)})
    assert _check({**params, "maxSourceBytes": big.stat().st_size})
    assert _check({**params, "maxSourceBytes": None})  # no cap unless the pipeline sets one
