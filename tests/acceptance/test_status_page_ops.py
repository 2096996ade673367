"""The status page's operating view, checked in headless Chromium (Debian's) through the
DevTools protocol, so layout is measured as a browser lays it out: the pipelines section first
with health badges and the failure streak highlighted, long errors wrapped (no sideways scroll),
the chart's axes and legend, and the quota labelled with its two sources."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.acceptance.helpers import cli, http_json, jobs_json, start_daemon, wait_until
from tests.acceptance.test_status_page import CHROMIUM, FLAGS
from tests.conftest import API_KEY, forecast, free_port, write_config

LONG_ID = "forecast_" + "x" * 300  # an unbreakable 300-character token in the error

CHECKS = {
    "first_section": "document.querySelector('h2').textContent",
    "sideways_scroll": "document.documentElement.scrollWidth - window.innerWidth",
    "long_error_height": """(() => {
        const td = [...document.querySelectorAll('#recent td.wrap')]
            .find(t => t.textContent.includes('xxxxxxxxxx'));
        return td ? td.getBoundingClientRect().height : -1; })()""",
    "badges": """[...document.querySelectorAll('#pipelines tr')].slice(1).map(
        r => [r.cells[0].textContent, r.querySelector('.h').textContent,
              getComputedStyle(r.querySelector('.h')).backgroundColor])""",
    "streak": """(() => { const td = document.querySelector('#pipelines td.streak');
        return [td.textContent, getComputedStyle(td).color]; })()""",
    "schedule": "document.querySelector('#pipelines tr:nth-child(2) td:nth-child(3)').textContent",
    "chart_text": "[...document.querySelectorAll('svg text')].map(t => t.textContent)",
    "legend": "[...document.querySelectorAll('#chart-legend text')].map(t => t.textContent)",
    "accounts": "document.querySelector('#accounts').innerText",
}


def chromium(profile: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Headless Chromium with its DevTools port open."""
    port = free_port()
    flags = [f"--user-data-dir={profile}", f"--remote-debugging-port={port}"]
    proc = subprocess.Popen(
        [str(CHROMIUM), *FLAGS, *flags, "--window-size=1024,900", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, port


async def browse(port: int, url: str, checks: dict[str, str]) -> dict[str, Any]:
    """Open `url` in the browser at DevTools `port`; evaluate each expression in the page."""
    async with aiohttp.ClientSession() as http:
        targets: list[dict[str, Any]] = []
        for _ in range(150):
            try:
                async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                    targets = [t for t in await r.json() if t["type"] == "page"]
                if targets:
                    break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        async with http.ws_connect(targets[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            ids = iter(range(1, 10_000))

            async def call(method: str, **params: Any) -> dict[str, Any]:
                n = next(ids)
                await ws.send_json({"id": n, "method": method, "params": params})
                async for msg in ws:
                    data = json.loads(msg.data)
                    if data.get("id") == n:
                        return dict(data["result"])
                raise AssertionError("DevTools connection closed")

            async def value(expr: str) -> Any:
                r = await call("Runtime.evaluate", expression=expr, returnByValue=True)
                return r["result"].get("value")

            await call("Page.navigate", url=url)
            for _ in range(100):
                if await value("location.href + ' ' + document.readyState") == (f"{url} complete"):
                    break
                await asyncio.sleep(0.1)
            return {name: await value(expr) for name, expr in checks.items()}


def ready(url: str) -> bool:
    try:
        return bool(http_json(url)["ready"])  # type: ignore[index]
    except OSError:
        return False


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_status_page_pipelines_first_errors_wrap_chart_and_quota_sources(
    tmp_path: Path, simulator: str
) -> None:
    http_json(simulator + "/_sim/config", {"unknown_forecasts": ["no_such_forecast", LONG_ID]})
    port = free_port()
    config = write_config(
        tmp_path,
        simulator,
        [
            {**forecast("daily"), "schedule": "0 6 * * *"},
            {**forecast("broken", forecastId=LONG_ID), "max_attempts": 1},
        ],
        api_key=API_KEY,
    )
    config.write_text(config.read_text().replace("port = 0", f"port = {port}"))
    for _ in range(2):
        assert cli("run", "--once", "--config", str(config)).returncode == 1
    daemon = start_daemon(config)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until(lambda: ready(url + "readyz"), daemon)
        browser, devtools = chromium(tmp_path / "profile")
        try:
            seen = asyncio.run(browse(devtools, url, CHECKS))
        finally:
            browser.terminate()
            browser.wait(10)
    finally:
        daemon.terminate()
        daemon.wait(60)
    assert len(jobs_json(config)) == 4
    assert seen["first_section"] == "Pipelines"
    assert seen["sideways_scroll"] <= 0  # the 300-character error wraps instead
    assert seen["long_error_height"] > 40  # ... over several lines
    assert seen["badges"] == [
        ["daily", "ok", "rgb(26, 127, 55)"],
        ["broken", "failing", "rgb(207, 34, 46)"],
    ]
    assert seen["streak"] == ["2 in a row", "rgb(207, 34, 46)"]
    assert seen["schedule"] == "daily at 06:00 (UTC)"
    assert {"hour (UTC)", "jobs finished per hour", "0", "2"} <= set(seen["chart_text"])
    assert seen["legend"] == ["succeeded", "failed or cancelled"]
    accounts = seen["accounts"]
    assert "quota used (our ledger)" in accounts and "quota left (the provider)" in accounts
    assert "2 / 1000" in accounts and "998 left of 1,000" in accounts
    assert "ledger: our submissions" in accounts and "provider: its own figure" in accounts
