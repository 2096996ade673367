"""Answers of an unexpected shape end as errors, not as empty successes (issue 13 #5), and
`check-config --online` accepts credentials only on a positive answer (issue 14 #1)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from orchestrator.config import ProviderConfig, load_config
from orchestrator.domain import JobState
from orchestrator.errors import BadAnswer, ProviderError
from orchestrator.providers.clari_ingest import ClariIngest
from orchestrator.simulator.server import SimulatorServer
from tests.conftest import API_KEY, API_SECRET, PARTNER_KEY, write_config
from tests.integration.helpers import all_jobs, run_once

DATASET = "4f1c2a9e-0000-4000-8000-000000000001"
TX = "7d0e8a52-0000-4000-8000-000000000009"


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[web.Application], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]

    yield start
    for r in runners:
        await r.cleanup()


def claravine_app(data: dict[str, Any]) -> web.Application:
    """A Claravine whose one Complete transaction's data comes as `data`."""

    async def datasets(_: web.Request) -> web.Response:
        return web.json_response({"datasets": [{"uuid": DATASET, "name": "Campaigns"}]})

    async def transactions(_: web.Request) -> web.Response:
        tx = {"uuid": TX, "transactionName": "manual", "status": "Complete"}
        return web.json_response({"transactions": [tx]})

    async def tx_data(_: web.Request) -> web.Response:
        return web.json_response(data)

    app = web.Application()
    app.router.add_get("/v1/datasets", datasets)
    app.router.add_get(f"/v1/{DATASET}/transactions", transactions)
    app.router.add_get(f"/v1/{DATASET}/transaction/{TX}/data/", tx_data)
    return app


@pytest.mark.parametrize(
    ("data", "ok"),
    [
        ({"header": ["Campaign Name"], "rows": [["Spring"], ["Fall"]]}, True),
        ({"data": {"header": ["Campaign Name"], "rows": [["Spring"]]}}, False),  # another key
        ({"header": ["Campaign Name"], "records": [["Spring"]]}, False),
        ({"header": "Campaign Name", "rows": [["Spring"]]}, False),
    ],
    ids=["documented", "under-data", "records", "header-string"],
)
async def test_transactions_under_an_unexpected_key_fail_the_export(
    tmp_path: Path, sim: SimulatorServer, serve: Any, data: dict[str, Any], ok: bool
) -> None:
    """Data under a key the daemon did not expect once SUCCEEDED as a header-only file."""
    base = await serve(claravine_app(data))
    pipeline = {
        "name": "cv-export",
        "kind": "claravine.transactions_export",
        "max_attempts": 2,
        "params": {"dataset": DATASET, "start-date": "{{ day-1 }}", "end-date": "{{ day+1 }}"},
    }
    prov = {"base_url": base + "/v1", "api_secret": API_SECRET}
    cfg = load_config(
        write_config(tmp_path, sim.base_url("clari"), [pipeline], providers={"claravine": prov})
    )
    await run_once(cfg)
    (job,) = await all_jobs(cfg)
    if ok:
        assert job.state == JobState.SUCCEEDED, job.error
        assert job.result_rows == 2
        return
    assert job.state == JobState.FAILED
    assert job.error is not None and "unexpected answer, field" in job.error
    assert "transaction/{uuid}/data" in job.error
    assert not list((tmp_path / "results").rglob("*.csv"))  # no header-only file


def _ingest(base: str) -> ClariIngest:
    cfg = ProviderConfig(base_url=base + "/v4", api_key=API_KEY, partner_key=PARTNER_KEY, retries=0)
    return ClariIngest(cfg, "clari")


async def test_ingest_keys_are_accepted_only_on_the_documented_not_found(
    sim: SimulatorServer, serve: Any
) -> None:
    ingest = ClariIngest(
        ProviderConfig(
            base_url=sim.base_url("clari"),
            api_key=API_KEY,
            partner_key=PARTNER_KEY,
        ),
        "clari",
    )
    try:
        assert await ingest.check() == "apikey and partnerkey accepted"
    finally:
        await ingest.close()

    async def other_404(_: web.Request) -> web.Response:
        return web.Response(status=404, text="<html>Not Found</html>", content_type="text/html")

    async def other_200(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    for handler in (other_404, other_200):
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        ingest = _ingest(await serve(app))
        try:
            with pytest.raises(ProviderError) as info:
                await ingest.check()
            assert isinstance(info.value, BadAnswer) or info.value.status == 404
        finally:
            await ingest.close()


def claro_app(download_url: str) -> web.Application:
    """A Claro whose export answers hand out `download_url`."""

    async def dataset(_: web.Request) -> web.Response:
        return web.json_response({"success": True, "data": {"status": "completed", "rowCount": 2}})

    async def export(_: web.Request) -> web.Response:
        return web.json_response({"success": True, "data": {"downloadUrl": download_url}})

    app = web.Application()
    app.router.add_get("/api/v2/datasets/ds1", dataset)
    app.router.add_post("/api/v2/datasets/ds1/export", export)
    return app


def claro_config(tmp_path: Path, sim: SimulatorServer, base: str) -> Any:
    pipeline = {
        "name": "claro-x",
        "kind": "claro.dataset_export",
        "max_attempts": 1,
        "params": {"datasetId": "ds1", "format": "csv"},
    }
    prov = {"base_url": base + "/api/v2"}
    return load_config(
        write_config(tmp_path, sim.base_url("clari"), [pipeline], providers={"claro": prov})
    )


async def test_download_urls_from_the_provider_get_no_credentials(
    tmp_path: Path, sim: SimulatorServer, serve: Any
) -> None:
    seen: list[dict[str, str]] = []

    async def file(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(text="id,name\n1,a\n2,b\n", content_type="text/csv")

    files = web.Application()
    files.router.add_get("/f", file)
    other = await serve(files)  # another origin (port) on loopback: plain http allowed
    cfg = claro_config(tmp_path, sim, await serve(claro_app(other + "/f?signature=s3cr3t")))
    await run_once(cfg)
    (job,) = await all_jobs(cfg)
    assert job.state == JobState.SUCCEEDED, job.error
    assert seen and not any("authorization" in {k.lower() for k in h} for h in seen)
    assert not any(API_KEY in v for h in seen for v in h.values())


@pytest.mark.parametrize(
    "url", ["http://files.example.invalid/f?sig=1", "ftp://files.example.invalid/f", "x"]
)
async def test_download_urls_must_be_https_unless_loopback(
    tmp_path: Path, sim: SimulatorServer, serve: Any, url: str
) -> None:
    cfg = claro_config(tmp_path, sim, await serve(claro_app(url)))
    await run_once(cfg)
    (job,) = await all_jobs(cfg)
    assert job.state == JobState.FAILED
    assert job.error is not None and ("not https" in job.error or "not a URL" in job.error)
