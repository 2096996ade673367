"""A failure notification survives kill -9 between the failure and its delivery; `notify test`
and `notify list` as a user runs them. The webhook is a real aiohttp server on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.acceptance.helpers import cli, jobs_json, start_daemon, wait_until
from tests.conftest import API_KEY, forecast, free_port, write_config

pytestmark = pytest.mark.slow
TOKEN = "hook-T0k3n-zz91"


class Webhook:
    """An aiohttp server in a thread of its own, recording the JSON bodies it is sent."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.bodies: list[dict[str, Any]] = []
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),))

    async def _serve(self) -> None:
        async def receive(request: web.Request) -> web.Response:
            self.bodies.append(await request.json())
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post(f"/hook/{TOKEN}", receive)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def __enter__(self) -> Webhook:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        assert self._stop is not None and self._loop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def config(tmp_path: Path, simulator: str) -> Iterator[tuple[Path, int]]:
    port = free_port()
    path = write_config(
        tmp_path,
        simulator,
        [{**forecast("bad", forecastId="no_such_forecast"), "max_attempts": 1}],
        api_key=API_KEY,
    )
    url = f"http://127.0.0.1:{port}/hook/{TOKEN}"
    path.write_text(path.read_text() + f'[[notify]]\nurl = "{url}"\non = ["failed"]\n')
    yield path, port


def test_failure_notification_survives_kill_9_before_delivery(config: tuple[Path, int]) -> None:
    path, port = config
    assert cli("db", "upgrade", "--config", str(path)).returncode == 0
    # The webhook is down: the daemon can record the failure but not deliver it.
    daemon = start_daemon(path)
    try:
        cli("trigger", "bad", "--config", str(path), check=True)
        wait_until(lambda: [j["state"] for j in jobs_json(path)] == ["FAILED"], daemon)
    finally:
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait(10)

    with Webhook(port) as hook:
        resumed = cli("run", "--exit-when-idle", "--config", str(path))
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert [(b["event"], b["pipeline"], b["job_id"]) for b in hook.bodies] == [
            ("failed", "bad", 1)
        ]
        again = cli("run", "--exit-when-idle", "--config", str(path))
        assert again.returncode == 0 and len(hook.bodies) == 1  # delivered once, not again

        listed = cli("notify", "list", "--json", "--config", str(path), check=True)
        (row,) = json.loads(listed.stdout)
        assert row["event"] == "failed" and row["state"] == "DELIVERED"
        assert row["url"].startswith(f"http://127.0.0.1:{port}/…#")

        sent = cli("notify", "test", "--json", "--config", str(path))
        assert sent.returncode == 0, sent.stderr
        assert json.loads(sent.stdout) == [{"url": row["url"], "ok": True, "error": None}]
        assert hook.bodies[-1]["event"] == "test" and "text" in hook.bodies[-1]
        for proc in (resumed, again, listed, sent):
            assert TOKEN not in proc.stdout + proc.stderr

    down = cli("notify", "test", "--config", str(path))
    assert down.returncode == 1 and "FAILED" in down.stdout and TOKEN not in down.stdout
