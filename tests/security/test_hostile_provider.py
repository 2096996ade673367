"""A hostile provider on loopback (issue 14): the daemon, run as a subprocess exactly as it is
deployed, against a fake Clari whose answers misbehave one way per test. Each test asserts:

- the API key (chosen to differ in each encoding) appears in no byte of the logs, the ledger
  (SQLite file and WAL) or the outputs, raw, URL-encoded, JSON-escaped or base64;
- the daemon stays up and ready (/readyz) throughout, and stops cleanly (rc 0) on SIGTERM;
- its peak RSS (VmHWM) stays under RSS_BOUND;
- the job ends as the README says (a bad answer is a retryable error: the job retries and then
  fails, or, when the provider comes to its senses, succeeds).
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from aiohttp import web

from tests.conftest import free_port, toml_value

pytestmark = pytest.mark.slow

# Every encoding of this key differs from the others: '/', '+', '"' and '=' are escaped by URLs,
# '"' (and '/' by some encoders) by JSON, and base64 shares nothing with it.
KEY = 'hk/Zq8+Xt"P3=vLw-7Yd'
RSS_BOUND = 200 * 1024 * 1024  # bytes; baseline ≈ 60-70 MiB, a 1 GiB read would be ≥ 1 GiB


def encodings(key: str) -> dict[str, str]:
    return {
        "raw": key,
        "url": quote(key, safe=""),
        "url_plus": quote_plus(key),
        "json": json.dumps(key)[1:-1],
        "json_slash": json.dumps(key)[1:-1].replace("/", "\\/"),
        "base64": base64.b64encode(key.encode()).decode(),
        "base64url": base64.urlsafe_b64encode(key.encode()).decode(),
    }


# --- the fake provider ----------------------------------------------------------------------


@dataclass
class Fake:
    """Fake Clari export API. `submit`, `poll` and `results` are the behaviours of the three
    calls (callables that return a response, or None for the well-behaved answer)."""

    submit: Callable[[web.Request], Any] | None = None
    poll: Callable[[web.Request], Any] | None = None
    results: Callable[[web.Request], Any] | None = None
    job_id: str = "job-1"
    raw_paths: list[str] = field(default_factory=list)
    served_bytes: int = 0
    posts: int = 0
    polls: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v4/admin/limits", self._limits)
        app.router.add_post("/v4/export/forecast/{fid}", self._submit)
        app.router.add_get("/v4/export/jobs", self._list)
        app.router.add_route("*", "/v4/export/jobs/{tail:.*}", self._job)
        return app

    @web.middleware
    async def record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.raw_paths.append(request.raw_path)
        result: web.StreamResponse = await handler(request)
        return result

    async def _limits(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "concurrentLimit": 3,
                "monthlyQuota": 100,
                "availableConcurrentLimit": 3,
                "availableMonthlyQuota": 100,
            }
        )

    async def _submit(self, request: web.Request) -> web.StreamResponse:
        self.posts += 1
        if self.submit is not None and (resp := await _call(self.submit, request)) is not None:
            return resp
        return web.json_response({"jobId": self.job_id})

    async def _list(self, _: web.Request) -> web.Response:
        return web.json_response([])  # nothing was created by a submit that went wrong

    async def _job(self, request: web.Request) -> web.StreamResponse:
        if request.raw_path.endswith("/results"):
            if self.results is not None and (r := await _call(self.results, request)) is not None:
                return r
            return web.Response(text="Forecast,Value\nfc,1\n", content_type="text/csv")
        self.polls += 1
        if self.poll is not None and (resp := await _call(self.poll, request)) is not None:
            return resp
        return web.json_response({"jobId": self.job_id, "status": "DONE", "startTime": 1})


async def _call(fn: Callable[[web.Request], Any], request: web.Request) -> Any:
    out = fn(request)
    return await out if asyncio.iscoroutine(out) else out


class Server:
    """An aiohttp app on a loopback port, in a thread of its own (the tests block)."""

    def __init__(self, app: web.Application) -> None:
        self.app, self.port = app, free_port()
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        self.loop.run_until_complete(site.start())
        self._ready.set()
        self.loop.run_forever()

    def __enter__(self) -> Server:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def fake() -> Iterator[tuple[Fake, Server]]:
    f = Fake()
    app = f.app()
    app.middlewares.append(f.record)
    with Server(app) as server:
        yield f, server


# --- the daemon under test --------------------------------------------------------------------


class Daemon:
    def __init__(self, tmp: Path, base_url: str, provider: dict[str, Any]) -> None:
        self.tmp, self.web_port = tmp, free_port()
        self.config = tmp / "orchestrator.toml"
        self.log = tmp / "daemon.log"
        self.db = tmp / "ledger.db"
        prov = {
            "base_url": base_url,
            "api_key": KEY,
            "retries": 1,
            "retry_base": "0.05s",
            "retry_cap": "0.2s",
            "timeout": "5s",
            "request_deadline": "3s",
            "poll": {"initial": "0.1s", "max_interval": "0.3s", "min_interval": "0.05s"},
            **provider,
        }
        lines = [
            "[ledger]",
            f'url = "sqlite+aiosqlite:///{self.db}"',
            "[output]",
            f'dir = "{tmp}/results"',
            "[web]",
            f"port = {self.web_port}",
            "[daemon]",
            'retry_base = "0.1s"',
            'retry_cap = "0.3s"',
            'claim_interval = "0.1s"',
            "[providers.clari]",
            *(f"{k} = {toml_value(v)}" for k, v in prov.items()),
            "[[pipelines]]",
            'name = "hostile"',
            'kind = "clari.forecast_export"',
            "max_attempts = 2",
            'params = { forecastId = "fc_1", exportFormat = "CSV" }',
        ]
        self.config.write_text("\n".join(lines) + "\n")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "orchestrator",
                "trigger",
                "hostile",
                "--config",
                str(self.config),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "run", "--config", str(self.config)],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        self.peak_rss = 0

    def job(self) -> dict[str, Any]:
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        try:
            con.row_factory = sqlite3.Row
            row = con.execute("SELECT * FROM jobs ORDER BY id LIMIT 1").fetchone()
            return dict(row) if row else {}
        finally:
            con.close()

    def ready(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.web_port}/readyz"
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def sample_rss(self) -> None:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                self.peak_rss = max(self.peak_rss, int(line.split()[1]) * 1024)

    def wait(self, condition: Callable[[dict[str, Any]], bool], timeout: float = 40) -> None:
        """Until the job satisfies `condition`, checking on the way that the daemon lives."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, "the daemon exited:\n" + self.log_text()[-3000:]
            self.sample_rss()
            job = self.job()
            if job and condition(job):
                return
            assert time.monotonic() < deadline, f"timed out; job {job}"
            time.sleep(0.1)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            assert self.proc.poll() is None, "the daemon exited:\n" + self.log_text()[-3000:]
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.1)

    def stop(self, within: float = 20) -> int:
        if self.proc.poll() is None:
            self.sample_rss()
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(within)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log_file.close()
        return rc

    def log_text(self) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        return self.log.read_bytes().decode("utf-8", "replace")

    def assert_no_leak(self) -> None:
        """No encoding of the key in any byte the daemon wrote."""
        files = [self.log, *self.tmp.glob("ledger.db*")]
        results = self.tmp / "results"
        if results.exists():
            files += [p for p in results.rglob("*") if p.is_file()]
        for path in files:
            data = path.read_bytes()
            for name, form in encodings(KEY).items():
                assert form.encode() not in data, f"key ({name}) leaked into {path.name}"


@pytest.fixture
def daemon(tmp_path: Path, fake: tuple[Fake, Server]) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(**provider: Any) -> Daemon:
        d = Daemon(tmp_path, f"http://127.0.0.1:{fake[1].port}/v4", provider)
        started.append(d)
        d.wait_ready()
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


def finish(d: Daemon) -> str:
    """Stop the daemon; the shared assertions: clean exit, no traceback, no leak, bounded RSS."""
    assert d.ready(), "not ready at the end"
    rc = d.stop()
    log = d.log_text()
    # SIGTERM: 0, or 1 when a job this run finished FAILED (the exit-code contract is h-install's)
    assert rc in (0, 1), log[-3000:]
    assert "Traceback" not in log and "RecursionError" not in log, log[-3000:]
    d.assert_no_leak()
    assert d.peak_rss < RSS_BOUND, f"peak RSS {d.peak_rss / 2**20:.0f} MiB"
    return log


def terminal(job: dict[str, Any]) -> bool:
    return job.get("state") in ("SUCCEEDED", "FAILED", "CANCELLED")


# --- the behaviours ------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["submit", "results"])
def test_cross_origin_redirect_is_not_followed(
    fake: tuple[Fake, Server], daemon: Callable[..., Daemon], where: str
) -> None:
    """A 307 to another host: nothing is sent there (aiohttp would carry `apikey` along); the
    call fails as a provider error and the job retries, then fails."""
    f, _ = fake
    thief = Fake()
    stolen: list[dict[str, str]] = []

    @web.middleware
    async def steal(request: web.Request, handler: Any) -> web.StreamResponse:
        stolen.append(dict(request.headers))
        return web.Response(status=404)

    thief_app = thief.app()
    thief_app.middlewares.append(steal)
    with Server(thief_app) as other:
        target = f"http://127.0.0.1:{other.port}/v4/export/forecast/fc_1"

        def redirect(_: web.Request) -> web.Response:
            return web.Response(status=307, headers={"Location": target})

        setattr(f, where, redirect)
        d = daemon()
        if where == "submit":  # retried (max_attempts = 2), then FAILED
            d.wait(terminal)
            job = d.job()
            assert job["state"] == "FAILED"
            assert "redirect refused" in job["error"]
        else:  # the result stays on the provider: fetching is retried later, never resubmitted
            d.wait(lambda j: j["state"] == "FETCHING" and d.log_text().count("fetch_retry") >= 2)
            assert "redirect refused" in d.log_text()
        assert stolen == []  # not one request reached the other host
        finish(d)


def test_key_echoed_in_code_and_message_in_four_encodings_is_redacted(
    fake: tuple[Fake, Server], daemon: Callable[..., Daemon]
) -> None:
    f, _ = fake
    forms = encodings(KEY)
    calls = [0]

    def echo(_: web.Request) -> web.Response:
        calls[0] += 1
        body = {
            "code": "BAD:" + forms["raw"] + "|" + forms["base64"],
            "message": " ".join(f"{n}={v}" for n, v in forms.items()),
        }
        status = 500 if calls[0] == 1 else 401  # a retried 5xx first, then a final 401
        return web.Response(status=status, text=json.dumps(body), content_type="application/json")

    f.submit = echo
    d = daemon()
    d.wait(terminal)
    job = d.job()
    assert job["state"] == "FAILED"
    assert "***" in job["error"] and "BAD:" in job["error"]
    web_json = urllib.request.urlopen(f"http://127.0.0.1:{d.web_port}/api/jobs", timeout=5).read()
    page = urllib.request.urlopen(f"http://127.0.0.1:{d.web_port}/", timeout=5).read()
    for form in forms.values():
        assert form.encode() not in web_json and form.encode() not in page
    finish(d)


@pytest.mark.parametrize(
    "answer",
    [
        ["not", "an", "object"],
        {"jobId": "job-1"},  # no status
        {"jobId": "job-1", "status": {"nested": True}},
        {"jobId": ["job-1"], "status": "DONE"},
        "DONE",
        None,
    ],
    ids=["list", "no-status", "status-object", "id-list", "string", "null"],
)
def test_wrong_shapes_from_the_status_call_are_retried_not_fatal(
    fake: tuple[Fake, Server], daemon: Callable[..., Daemon], answer: Any
) -> None:
    """`["not","an","object"]` from GET /export/jobs/{id} used to stop the daemon (and again on
    every restart). Now the poll fails, the job keeps being polled, and once the provider
    answers properly the job succeeds."""
    f, _ = fake
    healed = threading.Event()

    def wrong(_: web.Request) -> web.Response | None:
        if healed.is_set():
            return None
        return web.Response(text=json.dumps(answer), content_type="application/json")

    f.poll = wrong
    d = daemon()
    d.wait(lambda j: j["state"] == "RUNNING" and f.polls >= 3)
    assert d.ready()
    assert "poll_failed" in d.log_text() and "unexpected answer" in d.log_text()
    healed.set()
    d.wait(terminal)
    assert d.job()["state"] == "SUCCEEDED"
    finish(d)


def test_json_bomb_answering_the_status_call(
    fake: tuple[Fake, Server], daemon: Callable[..., Daemon]
) -> None:
    f, _ = fake
    bomb = "[" * 100_000 + "]" * 100_000  # 200 KB; RecursionError in the standard parser
    healed = threading.Event()
    f.poll = lambda _: None if healed.is_set() else web.Response(text=bomb)
    d = daemon()
    d.wait(lambda j: j["state"] == "RUNNING" and f.polls >= 3)
    assert d.ready()
    healed.set()
    d.wait(terminal)
    assert d.job()["state"] == "SUCCEEDED"
    finish(d)


def test_json_bomb_answering_the_submit_releases_the_job(
    fake: tuple[Fake, Server], daemon: Callable[..., Daemon]
) -> None:
    """The same bomb in answer to a submit left the job SUBMITTING with its slot held. Now the
    outcome is reconciled (the listing shows nothing was created): retried, then FAILED."""
    f, _ = fake
    f.submit = lambda _: web.Response(text="[" * 100_000 + "]" * 100_000)
    d = daemon()
    d.wait(terminal)
    job = d.job()
    assert job["state"] == "FAILED"
    assert "not JSON" in job["error"]
    assert f.posts == 2  # max_attempts
    finish(d)


async def _gigabyte(request: web.Request, fake: Fake, status: int) -> web.StreamResponse:
    """1 GiB, streamed from a generator (never allocated), no Content-Length."""
    resp = web.StreamResponse(status=status, headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    chunk = b"[" + b'"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",' * 2000
    sent = 0
    try:
        while sent < 1 << 30:
            await resp.write(chunk)
            sent += len(chunk)
            fake.served_bytes += len(chunk)
    except (ConnectionResetError, RuntimeError):  # the client hung up, as it should
        pass
    return resp


@pytest.mark.parametrize("status", [200, 400, 503])
def test_gigabyte_answer_is_capped(
    fake: tuple[Fake, Server], daemon: Callable[..., Daemon], status: int
) -> None:
    """A 1 GiB 200 answer took 3.5 GB of RSS, a 1 GiB 400 body 2.1 GB. Now the JSON answer stops
    at max_answer_bytes and the error body at max_error_bytes."""
    f, _ = fake
    healed = threading.Event()

    async def huge(request: web.Request) -> web.StreamResponse | None:
        if healed.is_set():
            return None
        return await _gigabyte(request, f, status)

    f.poll = huge
    d = daemon(max_answer_bytes=4 * 1024 * 1024)
    d.wait(lambda j: j["state"] != "PENDING" and f.polls >= 2, timeout=60)
    assert d.ready()
    healed.set()
    if status == 400:  # a 4xx on the status call: the job is unknown to the provider
        d.wait(terminal, timeout=60)
    else:
        d.wait(terminal, timeout=60)
        assert d.job()["state"] == "SUCCEEDED"
    assert f.served_bytes < 200 * 1024 * 1024, f"read {f.served_bytes / 2**20:.0f} MiB"
    finish(d)


def test_trickling_body_hits_the_deadline_and_sigterm_still_stops_the_daemon(
    fake: tuple[Fake, Server], daemon: Callable[..., Daemon]
) -> None:
    """A body at 1 byte/s kept the daemon not-ready for 45 s+ and it ignored two SIGTERMs."""
    f, _ = fake
    trickles = [0]

    async def trickle(request: web.Request) -> web.StreamResponse:
        trickles[0] += 1
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        try:
            for byte in b'{"jobId": "job-1", "status": "DONE"}':
                await resp.write(bytes([byte]))
                await asyncio.sleep(1.0)
        except (ConnectionResetError, RuntimeError):
            pass
        return resp

    f.poll = trickle
    d = daemon(request_deadline="1.5s")
    started = time.monotonic()
    d.wait(lambda _: trickles[0] >= 3, timeout=30)
    # three polls in well under the 37 s one trickled answer takes: each hit its deadline
    assert time.monotonic() - started < 20
    assert d.ready()
    assert "BadAnswer" in d.log_text() or "body not read" in d.log_text()
    t0 = time.monotonic()
    rc = d.stop(within=15)
    assert rc == 0
    assert time.monotonic() - t0 < 15
    d.assert_no_leak()


def test_dot_dot_remote_id_is_one_encoded_path_segment(
    fake: tuple[Fake, Server], daemon: Callable[..., Daemon]
) -> None:
    f, _ = fake
    f.job_id = "../../etc/x"
    d = daemon()
    d.wait(terminal)
    assert d.job()["state"] == "SUCCEEDED"
    job_paths = [p for p in f.raw_paths if p.startswith("/v4/export/jobs/")]
    assert job_paths, f.raw_paths
    for p in job_paths:
        assert p.startswith("/v4/export/jobs/..%2F..%2Fetc%2Fx"), p
    assert not any("/etc/" in p for p in f.raw_paths)
    finish(d)


def test_script_and_ansi_in_errors_are_stored_as_text_not_markup(
    fake: tuple[Fake, Server], daemon: Callable[..., Daemon]
) -> None:
    f, _ = fake
    evil = "<script>alert(1)</script>\x1b]0;pwned\x07\x1b[2J [link=http://x]click[/link]"

    def reject(_: web.Request) -> web.Response:
        body = {"code": "bad_request", "message": evil}
        return web.Response(status=400, text=json.dumps(body), content_type="application/json")

    f.submit = reject
    d = daemon()
    d.wait(terminal)
    assert d.job()["state"] == "FAILED"
    page = urllib.request.urlopen(f"http://127.0.0.1:{d.web_port}/", timeout=5).read()
    assert b"<script>alert" not in page
    api = urllib.request.urlopen(f"http://127.0.0.1:{d.web_port}/api/jobs", timeout=5).read()
    assert b"\x1b" not in api  # JSON escapes control characters
    log = finish(d)
    assert "\x1b" not in log  # JSON log lines escape them too
