"""HttpClient against a real loopback server: redirects, download URLs, caps, deadlines, and the
rate-limit semantics of issue 13 (#2, #3), timed at the server."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from aiohttp import web

from orchestrator.errors import BadAnswer, ProviderError, Rejected, Throttled, Unavailable
from orchestrator.http import HttpClient
from orchestrator.limits import AccountPace
from orchestrator.redaction import Redactor

KEY = 'ek/Zq8+Xt"P3=vLw-7Yd'

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Recorder:
    def __init__(self) -> None:
        self.times: list[float] = []
        self.headers: list[dict[str, str]] = []


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[tuple[str, Recorder]]]]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> tuple[str, Recorder]:
        rec = Recorder()

        async def record(request: web.Request) -> web.StreamResponse:
            rec.times.append(time.monotonic())
            rec.headers.append(dict(request.headers))
            return await handler(request)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", record)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}", rec

    yield start
    for r in runners:
        await r.cleanup()


def client(base: str, **kw: Any) -> HttpClient:
    settings: dict[str, Any] = {
        "headers": {"apikey": KEY},
        "secrets": [KEY],
        "retries": 3,
        "retry_base": 0.05,
        "retry_cap": 0.2,
        "requests_per_second": 1000,
        **kw,
    }
    return HttpClient("p", base, **settings)


# --- redaction --------------------------------------------------------------------------------


def test_every_encoding_of_a_secret_is_masked() -> None:
    r = Redactor([KEY])
    texts = [
        KEY,
        quote(KEY, safe=""),
        quote_plus(KEY),
        json.dumps(KEY),
        json.dumps(KEY).replace("/", "\\/"),
        base64.b64encode(KEY.encode()).decode(),
        base64.urlsafe_b64encode(KEY.encode()).decode(),
    ]
    # the key at each of base64's three alignments inside a longer text
    texts += [base64.b64encode((p + KEY).encode()).decode() for p in ("", "u:", "us:", "use:")]
    for text in texts:
        masked = r.redact(f"before {text} after")
        assert "***" in masked, text
        for form in texts[:7]:
            assert form not in masked
    assert r.redact("nothing secret here") == "nothing secret here"


async def test_error_code_message_and_body_are_redacted(serve: Any) -> None:
    async def echo(_: web.Request) -> web.Response:
        body = {"code": f"BAD:{quote(KEY, safe='')}", "message": f"key {KEY}", "extra": KEY}
        return web.json_response(body, status=401)

    base, _ = await serve(echo)
    http = client(base)
    try:
        with pytest.raises(ProviderError) as info:
            await http.json("GET", "/x")
    finally:
        await http.close()
    exc = info.value
    for text in (str(exc), exc.code or "", exc.message, json.dumps(exc.body)):
        assert KEY not in text and quote(KEY, safe="") not in text
    assert exc.code == "BAD:***"


# --- redirects and download URLs ----------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirects_are_refused_and_nothing_reaches_the_other_host(
    serve: Any, status: int
) -> None:
    async def steal(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    other, thief = await serve(steal)

    async def redirect(_: web.Request) -> web.Response:
        return web.Response(status=status, headers={"Location": other + "/x"})

    base, rec = await serve(redirect)
    http = client(base)
    try:
        with pytest.raises(BadAnswer, match="redirect refused"):
            await http.json("GET", "/x")
    finally:
        await http.close()
    assert len(rec.times) == 1  # not retried either
    assert thief.times == []


async def test_credentials_never_go_to_a_url_of_another_origin(serve: Any) -> None:
    async def ok(_: web.Request) -> web.Response:
        return web.json_response({})

    other, rec = await serve(ok)
    http = client("http://127.0.0.1:9/v1")
    try:
        with pytest.raises(BadAnswer, match="another origin"):
            await http.json("GET", other + "/download")
    finally:
        await http.close()
    assert rec.times == []


async def test_download_urls_get_no_credentials_and_must_be_https_unless_loopback(
    serve: Any,
) -> None:
    async def ok(_: web.Request) -> web.Response:
        return web.Response(body=b"data")

    other, rec = await serve(ok)
    downloads = client("http://127.0.0.1:9/v1", headers={})
    try:
        async with downloads.open("GET", other + "/file?sig=1", label="download") as resp:
            assert await resp.read() == b"data"
        assert not any(k.lower() in ("apikey", "authorization") for k in rec.headers[0])
        with pytest.raises(BadAnswer, match="not https"):
            await downloads.json("GET", "http://files.example.com/f?sig=1")
        with pytest.raises(BadAnswer, match="not https"):
            await downloads.json("GET", "ftp://files.example.com/f")
        for bad in ("https://[::1/x", "https://files.example.com:99999/x", "https://h:abc/x"):
            with pytest.raises(BadAnswer, match=r"unusable URL|not https"):
                await downloads.json("GET", bad)
        assert downloads.limiter._pending == 0  # no place in the window leaked
    finally:
        await downloads.close()


# --- caps and deadlines -------------------------------------------------------------------------


async def test_answer_and_error_bodies_are_capped(serve: Any) -> None:
    async def huge(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=int(request.query.get("status", "200")))
        await resp.prepare(request)
        try:
            for _ in range(64):  # 64 MiB offered
                await resp.write(b"x" * (1 << 20))
        except (ConnectionResetError, RuntimeError):
            pass
        return resp

    base, _ = await serve(huge)
    http = client(base, max_answer_bytes=1 << 20, max_error_bytes=4096, retries=0)
    try:
        with pytest.raises(BadAnswer, match="larger than"):
            await http.json("GET", "/x")
        with pytest.raises(Rejected) as info:
            await http.json("GET", "/x?status=400")
        assert len(info.value.message) < 5000
    finally:
        await http.close()


async def test_a_declared_length_over_the_cap_is_not_read_at_all(serve: Any) -> None:
    async def big(_: web.Request) -> web.Response:
        return web.Response(body=b"[" + b"1," * (1 << 20) + b"1]")  # Content-Length: 2 MiB

    base, _ = await serve(big)
    http = client(base, max_answer_bytes=1 << 20, retries=0)
    try:
        with pytest.raises(BadAnswer, match="larger than 1048576 bytes"):
            await http.json("GET", "/x")
    finally:
        await http.close()


async def test_a_trickling_answer_ends_at_the_request_deadline(serve: Any) -> None:
    async def trickle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        try:
            for _ in range(100):
                await resp.write(b" ")
                await asyncio.sleep(0.2)
        except (ConnectionResetError, RuntimeError):
            pass
        return resp

    base, _ = await serve(trickle)
    http = client(base, request_deadline=1.0, timeout=5.0, retries=0)
    started = time.monotonic()
    try:
        with pytest.raises(ProviderError):
            await http.json("GET", "/x")
    finally:
        await http.close()
    assert time.monotonic() - started < 3.0


# --- rate limits (issue 13 #2, #3) ----------------------------------------------------------------


async def test_a_5xx_with_requests_left_backs_off_instead_of_waiting_for_the_reset(
    serve: Any,
) -> None:
    calls = [0]

    async def flaky(_: web.Request) -> web.Response:
        calls[0] += 1
        headers = {"X-RateLimit-Remaining": "98", "X-RateLimit-Reset": str(int(time.time()) + 60)}
        if calls[0] == 1:
            return web.json_response({"message": "busy"}, status=503, headers=headers)
        return web.json_response({"ok": True}, headers=headers)

    base, rec = await serve(flaky)
    http = client(base)
    try:
        assert await http.json("GET", "/x") == {"ok": True}
    finally:
        await http.close()
    assert rec.times[1] - rec.times[0] < 1.0  # retry_base backoff, not the 60 s reset


async def test_after_a_429_no_request_of_the_account_leaves_before_the_reset(serve: Any) -> None:
    reset_at = [0.0]

    async def limited(request: web.Request) -> web.Response:
        if request.path == "/first":
            reset_at[0] = time.monotonic() + 1.0
            return web.json_response(
                {"message": "slow down"},
                status=429,
                headers={"Retry-After": "1", "X-RateLimit-Remaining": "0"},
            )
        return web.json_response({"ok": True})

    base, rec = await serve(limited)
    pace = AccountPace()
    api, downloads = (
        client(base, pace=pace, retries=0, throttle_retries=0),
        client(base, pace=pace, headers={}, rate_group="downloads"),
    )
    try:
        with pytest.raises(Throttled):
            await api.json("GET", "/first")
        # every other client of the account, and any retry, waits for the reset
        await asyncio.gather(
            downloads.json("GET", "/download"), api.json("GET", "/listing"), api.json("GET", "/b")
        )
    finally:
        await api.close()
        await downloads.close()
    assert len(rec.times) == 4
    assert min(rec.times[1:]) >= reset_at[0] - 0.02


async def test_remaining_zero_is_not_lifted_by_a_later_answer_with_more_left(serve: Any) -> None:
    order = [0]

    async def answers(_: web.Request) -> web.Response:
        order[0] += 1
        if order[0] == 1:  # the newest window state: nothing left for 1.5 s
            headers = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1.5"}
        else:  # an older, concurrent answer that still saw requests left
            headers = {"X-RateLimit-Remaining": "40", "X-RateLimit-Reset": "1.5"}
        return web.json_response({}, headers=headers)

    base, rec = await serve(answers)
    http = client(base)
    try:
        await http.json("GET", "/a")
        paused_at = time.monotonic()
        await http.json("GET", "/b")  # waits for the reset; its answer says 40 left
        await http.json("GET", "/c")
    finally:
        await http.close()
    assert rec.times[1] >= paused_at + 1.4
    assert http.pace.paused_for() == 0


async def test_no_one_second_window_at_the_server_holds_more_than_the_rate(serve: Any) -> None:
    async def slowish(_: web.Request) -> web.Response:
        await asyncio.sleep(0.03)  # the answer takes a while: requests overlap
        return web.json_response({})

    base, rec = await serve(slowish)
    pace = AccountPace()
    a = client(base, requests_per_second=20, pace=pace)
    b = client(base, requests_per_second=20, pace=pace)  # same group: one shared window
    try:
        await asyncio.gather(*(c.json("GET", f"/{i}") for i in range(30) for c in (a, b)))
    finally:
        await a.close()
        await b.close()
    times = sorted(rec.times)
    assert len(times) == 60
    for t in times:
        assert sum(1 for x in times if t <= x < t + 1.0) <= 20


async def test_a_dropped_connection_is_retried_with_backoff(serve: Any) -> None:
    calls = [0]

    async def drop(request: web.Request) -> web.StreamResponse:
        calls[0] += 1
        if calls[0] == 1:
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        return web.json_response({"ok": 1})

    base, rec = await serve(drop)
    http = client(base)
    try:
        assert await http.json("GET", "/x") == {"ok": 1}
    finally:
        await http.close()
    assert len(rec.times) == 2 and rec.times[1] - rec.times[0] < 1.0


async def test_not_json_is_a_bad_answer_not_a_crash(serve: Any) -> None:
    async def html(_: web.Request) -> web.Response:
        return web.Response(text="<html>oops</html>")

    base, _ = await serve(html)
    http = client(base)
    try:
        with pytest.raises(BadAnswer, match="not JSON") as info:
            await http.json("GET", "/x")
        assert isinstance(info.value, Unavailable) and info.value.retryable
    finally:
        await http.close()
