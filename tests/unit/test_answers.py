"""Property-based: arbitrary JSON fed to every adapter's response parsing lets only the documented
error type escape (BadAnswer for a shape, ProviderError for the call), never AttributeError,
KeyError, TypeError, RecursionError — and never an empty success for a shape we do not know."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import orchestrator.providers  # noqa: F401 (registers every adapter and its answer models)
from orchestrator.config import ProviderConfig
from orchestrator.errors import BadAnswer, ProviderError
from orchestrator.http import loads_json, safe_error_fields
from orchestrator.providers import claravine, clari, clari_ingest
from orchestrator.providers.answers import ANSWERS, Answer, parse_answer
from orchestrator.providers.claribi import ClariBIAdapter
from orchestrator.providers.claro import ClaroAdapter
from orchestrator.providers.clayva import ClayvaAdapter
from tests.conftest import free_port

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
KEYS = st.sampled_from(
    [
        "jobId",
        "status",
        "data",
        "jobs",
        "message",
        "datasets",
        "transactions",
        "uuid",
        "transactionUuid",
        "header",
        "rows",
        "results",
        "credits",
        "remaining",
        "valid",
        "report_id",
        "downloadUrl",
        "rowCount",
        "pagination",
        "id",
        "concurrentLimit",
        "errors",
    ]
) | st.text(max_size=8)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=6),
    max_leaves=30,
)


def test_every_adapter_declares_its_answers() -> None:
    modules = {m.__module__.rsplit(".", 1)[-1] for m in ANSWERS}
    assert {"clari", "clari_ingest", "claro", "claravine", "claribi", "clayva"} <= modules


@pytest.mark.parametrize("model", ANSWERS, ids=lambda m: m.__name__)
@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(data=JSON)
def test_any_json_parses_or_is_a_bad_answer(model: type[Answer], data: Any) -> None:
    try:
        parsed = parse_answer(model, data, provider="p", where="GET /x")
    except BadAnswer as exc:
        assert "GET /x" in str(exc) and exc.retryable
        return
    assert isinstance(parsed, model)


@settings(max_examples=300)
@given(data=JSON)
def test_error_bodies_of_any_shape_give_short_text(data: Any) -> None:
    code, message = safe_error_fields(data)
    assert code is None or (isinstance(code, str) and len(code) <= 200)
    assert isinstance(message, str) and len(message) <= 2000


@settings(max_examples=300)
@given(data=JSON)
def test_provider_detail_text_of_any_shape(data: Any) -> None:
    """The texts built from a Failed chunk's or ingest job's errors (stored in the ledger)."""
    assert isinstance(clari_ingest._errors_text(data), str)
    body = data if isinstance(data, dict) else {"errors": data}
    try:
        status = parse_answer(claravine.ClaravineStatus, body, provider="p", where="x")
    except BadAnswer:
        return
    assert isinstance(claravine._errors_text(status.as_dict(), [1, 2, 3]), str)


@settings(max_examples=200)
@given(raw=st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode()))
def test_loads_json_raises_only_value_error(raw: bytes) -> None:
    try:
        loads_json(raw)
    except ValueError:
        pass


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deep_nesting_is_a_value_error_not_a_recursion_error(depth: int) -> None:
    for bomb in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth):
        with pytest.raises(ValueError):
            loads_json(bomb + b" NaN")  # NaN forces the standard parser's fallback path
        try:
            loads_json(bomb)
        except ValueError:
            pass


def test_wrong_shapes_are_errors_not_empty_successes() -> None:
    """The shapes that used to pass as "nothing there": a listing under another key, a
    transaction's rows under another key, a dataset without its row count."""
    for model, data in [
        (clari.ClariJobList, {"items": []}),
        (claravine.ClaravineTransactions, {"data": []}),
        (claravine.ClaravineTable, {"columns": ["a"], "data": [[1]]}),
        (claravine.ClaravineTemplates, {"data": []}),
    ]:
        with pytest.raises(BadAnswer, match="field"):
            parse_answer(model, data, provider="p", where="GET /x")


# --- over real HTTP: every adapter call that reads an answer -------------------------------------


class _Box:
    body: bytes = b"{}"
    status: int = 200


BOX = _Box()


async def _answer(_: web.Request) -> web.Response:
    return web.Response(body=BOX.body, status=BOX.status, content_type="application/json")


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _answer)
    port = free_port()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    runner = web.AppRunner(app, access_log=None)

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield f"http://127.0.0.1:{port}"
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def _cfg(base: str, **kw: Any) -> ProviderConfig:
    return ProviderConfig(
        base_url=base,
        api_key="k-secret-value-1",
        api_secret="s-secret-value-2",
        partner_key="p-secret-value-3",
        retries=0,
        retry_base=0.01,
        requests_per_second=1000,
        **kw,
    )


def _calls(base: str) -> list[tuple[Any, Callable[[Any], Awaitable[Any]]]]:
    """(adapter, a call that reads one answer) for every adapter."""
    c = clari.ClariAdapter(_cfg(base + "/clari"))
    cv = claravine.ClaravineAdapter(_cfg(base + "/claravine"))
    cb = ClariBIAdapter(_cfg(base + "/claribi"))
    cl = ClaroAdapter(_cfg(base + "/claro"))
    cy = ClayvaAdapter(_cfg(base + "/clayva"))
    from datetime import date

    day = date(2026, 1, 1)
    return [
        (c, lambda a: a.limits()),
        (c, lambda a: a.poll(["one"])),
        (c, lambda a: a.poll(["one", "two"])),
        (c, lambda a: a.list_jobs()),
        (c, lambda a: a.ingest.check()),
        (cv, lambda a: a.template_fields("d")),
        (cv, lambda a: a.transactions("d", day, day)),
        (cv, lambda a: a.status("d", "t")),
        (cb, lambda a: a.check()),
        (cb, lambda a: a.list_reports(0.0)),
        (cl, lambda a: a.check()),
        (cl, lambda a: a.list_datasets({})),
        (cy, lambda a: a.check()),
    ]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=JSON, status=st.sampled_from([200, 200, 200, 400, 404, 500]))
def test_any_answer_over_http_escapes_only_as_a_provider_error(
    base_url: str, data: Any, status: int
) -> None:
    BOX.body, BOX.status = json.dumps(data).encode(), status

    async def run() -> None:
        calls = _calls(base_url)
        try:
            for adapter, call in calls:
                if isinstance(adapter, claravine.ClaravineAdapter):
                    adapter._templates = None
                try:
                    await call(adapter)
                except ProviderError:
                    pass
        finally:
            for adapter in {id(a): a for a, _ in calls}.values():
                await adapter.close()

    asyncio.run(run())
