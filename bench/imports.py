"""Bench 8 (issue 17): imports of any size, in bounded memory, at the provider's speed.

- peak RSS of the daemon importing a 100 MB and a 2 GB source of each kind (Claravine CSV,
  Clayva JSON Lines, Clari ingest JSON Lines), generated in the scratch directory and deleted
  after, the provider a sink with no limits (`python -m bench.imports sink PORT`: it answers
  as each API does and keeps nothing, so only the daemon's reading, sending and ledger count);
- the validation pass's MB/s beside a bare csv.reader / orjson line loop over the same file;
- import rate against the configured ceiling, at the real simulators with their limits on:
  Claravine POSTs + status polls per second vs requests_per_second, Clayva batches per
  minute vs requests_per_minute.

python -m bench.imports            every row (as `make bench` runs it: python -m bench.run imports)
python -m bench.imports worker CONFIG   one daemon import (run by the above), one JSON line
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import (
    ROOT,
    Simulator,
    free_port,
    http_json,
    pin,
    rss_peak_mib,
    scratch,
    wait_answering,
)

SIZES = {"100 MB": 100 * 10**6, "2 GB": 2 * 10**9}
DATASET = "4f1c2a9e-0000-4000-8000-000000000001"
T0 = 1_700_000_000_000
Row = dict[str, Any]


# --- source files ---------------------------------------------------------------------------


def _write(path: Path, size: int, line: Callable[[int, int], str], header: str = "") -> int:
    """`header`, then lines until `size` bytes, in blocks of 10,000 (`line(b, i)`: line i of
    block b); returns the number of lines."""
    n = 0
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write(header)
        written = len(header)
        b = 0
        while written < size:
            text = "".join(line(b, i) for i in range(10_000))
            f.write(text)
            written += len(text)
            n += 10_000
            b += 1
    return n


def claravine_csv(path: Path, size: int) -> int:
    header = "Campaign Name,Site ID,Audience Target,Brand vs Demand Gen,Budget Owner,Launch Month\n"
    return _write(
        path,
        size,
        lambda b, i: (
            f"Campaign {b}-{i} spring sale,S{i % 97},Adults 25-34,Brand,Marketing Ops,2026-11\n"
        ),
        header,
    )


def clayva_jsonl(path: Path, size: int) -> int:
    return _write(
        path,
        size,
        lambda b, i: (
            f'{{"event":"Product Viewed","userId":"user_{i % 50}",'
            f'"timestamp":"2026-11-21T10:{i // 60 % 60:02d}:{i % 60:02d}Z",'
            f'"properties":{{"productId":"SKU-{b}-{i}","price":29.99}}}}\n'
        ),
    )


def clari_jsonl(path: Path, size: int) -> int:
    return _write(
        path,
        size,
        lambda b, i: (
            f'{{"sourceEntity":"Account","id":"acc-{b}-{i}","createdAt":{T0},'
            f'"updatedAt":{T0 + i},"name":"Account {i}","owner":"rep-{i % 40}"}}\n'
        ),
    )


def clari_jsonl_amounts(path: Path, size: int) -> int:
    """Opportunities as a CRM exports them: UUID ids, a decimal amount, a boolean, an ISO time
    with milliseconds — all written as they render, so no line costs a rendering."""
    return _write(
        path,
        size,
        lambda b, i: (
            f'{{"sourceEntity":"Opportunity","id":"{uuid.UUID(int=b << 32 | i)}",'
            f'"createdAt":{T0},"updatedAt":{T0 + i},"amount":{i * 1.37:.2f},"won":true,'
            f'"closeDate":"2026-11-21T10:{i // 60 % 60:02d}:{i % 60:02d}.000Z"}}\n'
        ),
    )


def clari_array(path: Path, size: int) -> int:
    records = 0
    with path.open("w", encoding="utf-8") as f:
        f.write('[{"sourceEntity":"Account","records":[')
        written, b = 0, 0
        while written < size:
            text = ",".join(
                f'{{"id":"acc-{b}-{i}","createdAt":{T0},"updatedAt":{T0 + i},"name":"Account {i}"}}'
                for i in range(10_000)
            )
            f.write(("," if b else "") + text)
            written += len(text) + 1
            records += 10_000
            b += 1
        f.write("]}]")
    return records


# Upload files in flight at once (uploaded, ingestion not finished): the daemon's default.
CLARI_PARAMS = {"entity": "Account", "concurrentFiles": 2}
KINDS: dict[str, tuple[str, str, Callable[[Path, int], int], dict[str, Any]]] = {
    # label: (file name, kind, writer, params)
    "Claravine CSV": ("src.csv", "claravine.submission", claravine_csv, {"dataset": DATASET}),
    "Clayva JSON Lines": ("src.jsonl", "clayva.events_import", clayva_jsonl, {}),
    "Clari ingest JSON Lines": ("src.jsonl", "clari.ingest", clari_jsonl, CLARI_PARAMS),
    "Clari ingest JSON array": ("src.json", "clari.ingest", clari_array, CLARI_PARAMS),
}


# --- the sink: every import API, no limits, nothing kept ----------------------------------------


def sink(port: int) -> None:
    from aiohttp import web

    stats = {"requests": 0, "bytes": 0}

    async def body(request: web.Request) -> None:
        stats["requests"] += 1
        async for data in request.content.iter_chunked(1 << 20):
            stats["bytes"] += len(data)

    async def datasets(request: web.Request) -> web.Response:
        return web.json_response({"datasets": [{"uuid": DATASET, "fields": None}]})

    async def claravine_post(request: web.Request) -> web.Response:
        await body(request)
        return web.json_response({"transactionUuid": f"tx-{stats['requests']}"}, status=201)

    async def claravine_status(request: web.Request) -> web.Response:
        stats["requests"] += 1
        return web.json_response({"status": "Complete"})

    async def clayva_batch(request: web.Request) -> web.Response:
        await body(request)
        return web.json_response({"success": True, "data": {}})

    async def ingest_post(request: web.Request) -> web.Response:
        await body(request)
        return web.json_response({"jobId": f"ing-{stats['requests']}"})

    async def ingest_job(request: web.Request) -> web.Response:
        stats["requests"] += 1
        return web.json_response({"status": "SUCCESS"})

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(stats)

    app = web.Application(client_max_size=64 << 20)
    app.router.add_get("/claravine/v1/datasets", datasets)
    app.router.add_post("/claravine/v1/{dataset}/data", claravine_post)
    app.router.add_get("/claravine/v1/{dataset}/transactions/{tx}/status/", claravine_status)
    app.router.add_post("/clayva/v1/events/batch", clayva_batch)
    app.router.add_post("/ingest/v2/ingest/bulk/entity/{entity}", ingest_post)
    app.router.add_get("/ingest/v2/ingest/job/{job}", ingest_job)
    app.router.add_get("/_stats", get_stats)
    pin(1)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


class Sink:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Sink:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.imports", "sink", str(self.port)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_answering(self.base + "/_stats")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


# --- configuration and the daemon-side worker ---------------------------------------------------


def config(
    d: Path, clari_base: str, kind: str, source: Path, params: dict[str, Any], **prov: Any
) -> Path:
    """A daemon with one import pipeline; `prov` are the import provider's settings."""
    provider = kind.split(".", 1)[0]

    def val(v: Any) -> str:
        return (
            json.dumps(v)
            if not isinstance(v, dict)
            else ("{ " + ", ".join(f"{k} = {val(x)}" for k, x in v.items()) + " }")
        )

    clari = {"base_url": clari_base, "api_key": "bench-key", "limits_refresh": "600s"}
    if provider == "clari":
        clari |= prov
    lines = [
        "[ledger]",
        f'url = "sqlite+aiosqlite:///{d}/ledger.db"',
        "[output]",
        f'dir = "{d / "results"}"',
        "[daemon]",
        'claim_interval = "0.05s"',
        "[providers.clari]",
        *(f"{k} = {val(v)}" for k, v in clari.items()),
    ]
    if provider != "clari":
        lines += [f"[providers.{provider}]", *(f"{k} = {val(v)}" for k, v in prov.items())]
    lines += [
        "[[pipelines]]",
        'name = "imp"',
        f'kind = "{kind}"',
        f"params = {val({'source': str(source), **params})}",
    ]
    path = d / "bench.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def _import(config_path: Path) -> dict[str, Any]:
    from orchestrator.config import load_config
    from orchestrator.engine.daemon import Daemon
    from orchestrator.ledger.store import Ledger

    cfg = load_config(config_path)
    daemon = Daemon(cfg, once=True, exit_when_idle=True, tune_gc=True)
    t0 = time.perf_counter()
    code = await daemon.run()
    elapsed = time.perf_counter() - t0
    ledger = Ledger(cfg.ledger.url)
    (job,) = await ledger.list_jobs()
    await ledger.close()
    return {
        "exit_code": code,
        "state": job.state.value,
        "error": (job.error or "")[:500],
        "rows": job.result_rows,
        "seconds": elapsed,
        "peak_rss_mib": rss_peak_mib(),
    }


def worker(config_path: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.imports", "worker", str(config_path)],
        cwd=ROOT,
        env=dict(os.environ, BENCH_LOG_LEVEL="WARNING"),
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"bench.imports worker failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# --- the rows ---------------------------------------------------------------------------------


def memory_rows(sizes: dict[str, int] = SIZES) -> tuple[list[Row], dict[str, Any]]:
    raw: dict[str, Any] = {}
    rows: list[Row] = []
    with Simulator() as sim, Sink() as snk:
        prov = {
            "claravine": {
                "base_url": snk.base + "/claravine/v1",
                "api_key": "k",
                "api_secret": "s",
                "requests_per_second": 100000,
                "poll": {"initial": "0.05s", "max_interval": "0.2s", "min_interval": "0.01s"},
            },
            "clayva": {
                "base_url": snk.base + "/clayva/v1",
                "api_key": "k",
                "requests_per_minute": 10**8,
                "requests_per_second": 100000,
            },
            "clari": {
                "partner_key": "p",
                "ingest_base_url": snk.base + "/ingest/v2",
                "requests_per_second": 100000,
                "poll": {"initial": "0.05s", "max_interval": "0.2s", "min_interval": "0.01s"},
            },
        }
        for label, (name, kind, write, params) in KINDS.items():
            got: dict[str, Any] = {}
            these = sizes
            for size_label, size in these.items():
                with scratch() as tmp:
                    d = Path(tmp)
                    src = d / name
                    t = time.perf_counter()
                    lines = write(src, size)
                    gen_s = time.perf_counter() - t
                    res = worker(config(d, sim.base, kind, src, params, **prov[kind.split(".")[0]]))
                    res |= {"file_bytes": src.stat().st_size, "lines": lines, "gen_s": gen_s}
                    src.unlink()
                got[size_label] = res
                print(f"  {label} {size_label}: {res}", file=sys.stderr)
            raw[label] = got
            small, big = (got[k] for k in these)
            ok = all(r["state"] == "SUCCEEDED" for r in (small, big))
            peak = max(small["peak_rss_mib"], big["peak_rss_mib"])
            spread = abs(big["peak_rss_mib"] - small["peak_rss_mib"])
            rows.append(
                {
                    "bench": 8,
                    "what": f"import peak RSS, {label}: " + " vs ".join(these),
                    "concurrency": params.get("concurrentFiles"),  # Clari files in flight
                    "value": f"{small['peak_rss_mib']:.0f} / {big['peak_rss_mib']:.0f} MiB",
                    "target": "<= 150 MiB, within 20 MiB",
                    "pass": ok and peak <= 150 and spread <= 20,
                    "detail": "; ".join(
                        f"{k}: {r['rows']:,} rows in {r['seconds']:.0f} s "
                        f"({r['file_bytes'] / 1e6 / r['seconds']:.0f} MB/s)"
                        + ("" if r["state"] == "SUCCEEDED" else f" {r['state']}: {r['error']}")
                        for k, r in got.items()
                    ),
                }
            )
    return rows, raw


def validation_rows(size: int = 100 * 10**6) -> tuple[list[Row], dict[str, Any]]:
    """MB/s of each validation pass and of a bare parser loop over the same file, run back to
    back five times in this process; the pair with the median ratio is reported."""
    import ijson
    import orjson

    from orchestrator.imports.events import validate_events
    from orchestrator.imports.records import validate_records
    from orchestrator.imports.tables import validate_table

    def bare_csv(p: Path) -> None:
        with p.open(newline="", encoding="utf-8") as f:
            for _ in csv.reader(f):
                pass

    def bare_jsonl(p: Path) -> None:
        with p.open("rb") as f:
            for line in f:
                orjson.loads(line)

    def bare_array(p: Path) -> None:  # ijson's C backend building every record
        with p.open("rb") as f:
            for _ in ijson.items(f, "item.records.item", use_float=True):
                pass

    cases: list[tuple[str, str, Callable[[Path, int], int], Callable[[Path], Any], Any]] = [
        ("Claravine CSV", "src.csv", claravine_csv, lambda p: validate_table(p, 1000), bare_csv),
        (
            "Claravine JSON Lines",
            "src.jsonl",
            clayva_jsonl,
            lambda p: validate_table(p, 1000),
            bare_jsonl,
        ),
        (
            "Clayva JSON Lines",
            "src.jsonl",
            clayva_jsonl,
            lambda p: validate_events(p, 1000),
            bare_jsonl,
        ),
        (
            "Clari ingest JSON Lines",
            "src.jsonl",
            clari_jsonl,
            lambda p: validate_records(p, 10 << 20),
            bare_jsonl,
        ),
        (
            "Clari ingest JSON Lines, amounts and UUIDs",
            "src.jsonl",
            clari_jsonl_amounts,
            lambda p: validate_records(p, 10 << 20),
            bare_jsonl,
        ),
        (
            "Clari ingest JSON array",
            "src.json",
            clari_array,
            lambda p: validate_records(p, 10 << 20),
            bare_array,
        ),
    ]
    baseline = {
        "bare_csv": "csv.reader",
        "bare_jsonl": "orjson line loop",
        "bare_array": "ijson.items (C) loop",
    }
    rows, raw = [], {}
    for label, name, write, validate, bare in cases:
        with scratch() as tmp:
            src = Path(tmp) / name
            write(src, size)
            mb = src.stat().st_size / 1e6
            pairs = []  # (bare seconds, validation seconds), run back to back
            for _ in range(5):
                t = time.perf_counter()
                bare(src)
                tb = time.perf_counter() - t
                t = time.perf_counter()
                validate(src)
                pairs.append((tb, time.perf_counter() - t))
        # Each pair ran under the same load (this machine is shared): the median pair's ratio.
        tb, tv = sorted(pairs, key=lambda p: p[0] / p[1])[len(pairs) // 2]
        v, b = mb / tv, mb / tb
        raw[label] = {"validate_mb_s": v, "bare_mb_s": b, "mb": mb}
        rows.append(
            {
                "bench": 8,
                "what": f"validation pass, {label}",
                "value": f"{v:.0f} MB/s ({v / b:.2f}x)",
                # The array form is read event by event (ijson): measured, no target of
                # issue 17's (which names csv.reader and the orjson line loop).
                "target": "-" if bare is bare_array else ">= 0.5x the bare parser",
                "pass": True if bare is bare_array else v / b >= 0.5,
                "detail": f"bare {baseline[bare.__name__]}"
                f" over the same {mb:.0f} MB file: {b:.0f} MB/s",
            }
        )
    return rows, raw


def rate_rows() -> tuple[list[Row], dict[str, Any]]:
    """At the real simulators, limits on: how close to the configured ceiling."""
    rows, raw = [], {}
    rps = 10  # Claravine's default requests_per_second
    with scratch() as tmp, Simulator() as sim:
        d = Path(tmp)
        src = d / "src.csv"
        lines = claravine_csv(src, 0)  # header only
        with src.open("a") as f:
            for i in range(160_000):
                f.write(f"Campaign {i},S{i % 97},Adults,Brand,Marketing,2026-11\n")
        lines = 160_000
        claravine = sim.base.replace("/clari/v4", "/claravine/v1")
        http_json(claravine + "/_sim/config", {"processing_time": 0.5})
        prov = {
            "base_url": claravine,
            "api_key": "sim-key",
            "api_secret": "sim-secret",
            "requests_per_second": rps,
            "poll": {"initial": "0.5s", "max_interval": "2s", "min_interval": "0.1s"},
        }
        http_json(claravine + "/_sim/config", {"api_key": "sim-key", "api_secret": "sim-secret"})
        before = http_json(claravine + "/_sim/stats")
        res = worker(config(d, sim.base, "claravine.submission", src, {"dataset": DATASET}, **prov))
        after = http_json(claravine + "/_sim/stats")
        reqs = sum(
            after[k] - before.get(k, 0) for k in ("posts", "status_requests", "list_requests")
        )
        res |= {"requests": reqs + 1, "rows": lines}
        raw["claravine"] = res
        per_s = res["requests"] / res["seconds"]
        rows.append(
            {
                "bench": 8,
                "what": "Claravine import: POSTs + status polls per second",
                "value": f"{per_s:.1f}/s ({per_s / rps:.0%})",
                "target": f">= 85% of requests_per_second = {rps}",
                "pass": per_s >= 0.85 * rps and res["state"] == "SUCCEEDED",
                "detail": f"{lines:,} rows, {res['requests']} requests in {res['seconds']:.1f} s "
                f"(whole daemon run: start-up, validation, last poll): "
                f"{lines / res['seconds']:,.0f} rows/s; one request at a time polled statuses "
                "in series before",
            }
        )
    # The strict window admits requests_per_minute in any 66 s (10% in hand), so the rate is
    # taken over three windows' worth of batches: 2 x rpm + 1 of them.
    rpm = 300
    batches = 2 * rpm + 1
    with scratch() as tmp, Simulator() as sim:
        d = Path(tmp)
        src = d / "src.jsonl"
        clayva_jsonl(src, 0)
        with src.open("a") as f:
            for i in range(batches * 100):
                f.write(f'{{"event":"Product Viewed","userId":"u{i}","properties":{{"i":{i}}}}}\n')
        clayva = sim.base.replace("/clari/v4", "/clayva/v1")
        http_json(clayva + "/_sim/config", {"batch_limit": 10**6})
        prov = {"base_url": clayva, "api_key": "sim-key", "requests_per_minute": rpm}
        params = {"batchSize": 100}
        res = worker(config(d, sim.base, "clayva.events_import", src, params, **prov))
        raw["clayva"] = res
        per_min = batches * 60 / res["seconds"]
        rows.append(
            {
                "bench": 8,
                "what": "Clayva import: batches per minute",
                "value": f"{per_min:.0f}/min ({per_min / rpm:.0%})",
                "target": f">= 85% of requests_per_minute = {rpm}",
                "pass": per_min >= 0.85 * rpm and res["state"] == "SUCCEEDED",
                "detail": f"{batches * 100:,} events in {batches} batches of 100 in "
                f"{res['seconds']:.1f} s (whole daemon run)",
            }
        )
    return rows, raw


def b8_imports() -> tuple[list[Row], dict[str, Any]]:
    rows, raw = [], {}
    for name, fn in (("rate", rate_rows), ("validation", validation_rows), ("memory", memory_rows)):
        r, data = fn()
        rows += r
        raw[name] = data
    return rows, raw


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "sink":
        sink(int(sys.argv[2]))
        return
    if len(sys.argv) > 2 and sys.argv[1] == "worker":
        pin(0)
        from orchestrator.logging import configure

        configure(json=True, level=os.environ.get("BENCH_LOG_LEVEL", "WARNING"))
        print(json.dumps(asyncio.run(_import(Path(sys.argv[2])))))
        return
    only = set(sys.argv[1:])
    if os.environ.get("BENCH_IMPORT_SIZES"):  # e.g. "10e6,20e6": a quick run of the machinery
        small, big = (int(float(x)) for x in os.environ["BENCH_IMPORT_SIZES"].split(","))
        SIZES.clear()
        SIZES.update({f"{small / 1e6:.0f} MB": small, f"{big / 1e6:.0f} MB": big})
    if os.environ.get("BENCH_IMPORT_KINDS"):  # e.g. "Claravine,Clayva": those kinds only
        wanted = os.environ["BENCH_IMPORT_KINDS"].split(",")
        for label in list(KINDS):
            if not any(label.startswith(w) for w in wanted):
                del KINDS[label]
    fns = {"rate": rate_rows, "validation": validation_rows, "memory": memory_rows}
    for name, fn in fns.items():
        if only and name not in only:
            continue
        rows, _ = fn()
        for r in rows:
            print(json.dumps(r))


if __name__ == "__main__":
    main()
