"""The status page at `/`: one server-rendered HTML page (no build step, no script), refreshed
every 5 s — jobs in flight, recent jobs, a 24-hour timeline and quota/concurrency gauges."""

from __future__ import annotations

from datetime import datetime, timedelta
from html import escape
from typing import Any

from orchestrator.domain import IN_FLIGHT, TERMINAL, ImportProgress, Job, JobState
from orchestrator.ledger.store import utcnow

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d2330;background:#f6f7f9}
h1{font-size:20px;margin:0 0 4px} h2{font-size:15px;margin:22px 0 8px}
.muted{color:#6b7280} .cards{display:flex;gap:12px;flex-wrap:wrap}
.card{background:#fff;border:1px solid #e3e6ea;border-radius:8px;padding:10px 14px;min-width:110px}
.card b{display:block;font-size:22px}
table{border-collapse:collapse;background:#fff;width:100%;border:1px solid #e3e6ea}
th,td{padding:5px 8px;border-bottom:1px solid #eef0f3;text-align:left;white-space:nowrap}
th{background:#fafbfc;font-weight:600}
.s{padding:1px 7px;border-radius:9px;font-size:12px;color:#fff}
.SUCCEEDED{background:#1a7f37}.FAILED{background:#cf222e}.CANCELLED{background:#6e7781}
.RUNNING{background:#0969da}.SUBMITTING{background:#8250df}.FETCHING{background:#bf8700}
.PENDING{background:#9a6700}.RETRY_WAIT{background:#bc4c00}
.gauge{height:12px;background:#e9ecef;border-radius:6px;overflow:hidden;width:220px}
.gauge i{display:block;height:100%;background:#0969da}
svg rect.ok{fill:#1a7f37} svg rect.bad{fill:#cf222e}
"""


def _gauge(used: int | None, limit: int | None) -> str:
    if limit in (None, 0) or used is None:
        return f'<span class="muted">{used if used is not None else "?"} / no limit</span>'
    pct = max(0.0, min(100.0, 100.0 * used / limit))
    bar = f'<div class="gauge" title="{used}/{limit}"><i style="width:{pct:.0f}%"></i></div>'
    return f"{bar} {used} / {limit}"


def _num(n: int | None) -> str:
    return "" if n is None else f"{n:,}"


def _state(s: JobState) -> str:
    return f'<span class="s {s.value}">{s.value}</span>'


def _age(start: datetime | None, end: datetime | None = None) -> str:
    if start is None:
        return ""
    seconds = ((end or utcnow()) - start).total_seconds()
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _timeline(jobs: list[Job], now: datetime) -> str:
    hours = [now - timedelta(hours=23 - i) for i in range(24)]
    ok = [0] * 24
    bad = [0] * 24
    for j in jobs:
        if j.finished_at is None or j.finished_at < now - timedelta(hours=24):
            continue
        i = min(23, int((j.finished_at - hours[0]).total_seconds() // 3600) + 0)
        if 0 <= i < 24:
            (ok if j.state == JobState.SUCCEEDED else bad)[i] += 1
    peak = max([1, *(a + b for a, b in zip(ok, bad, strict=True))])
    bars = []
    for i in range(24):
        h_ok, h_bad = 60 * ok[i] / peak, 60 * bad[i] / peak
        x = i * 22
        bars.append(
            f'<rect class="ok" x="{x}" y="{70 - h_ok:.1f}" width="18" height="{h_ok:.1f}">'
            f"<title>{hours[i]:%H}:00 {ok[i]} succeeded</title></rect>"
            f'<rect class="bad" x="{x}" y="{70 - h_ok - h_bad:.1f}" width="18" '
            f'height="{h_bad:.1f}">'
            f"<title>{hours[i]:%H}:00 {bad[i]} failed/cancelled</title></rect>"
        )
    labels = "".join(
        f'<text x="{i * 22}" y="84" font-size="10" fill="#6b7280">{hours[i]:%H}</text>'
        for i in range(0, 24, 3)
    )
    return f'<svg width="530" height="90" role="img">{"".join(bars)}{labels}</svg>'


def render(
    *,
    counts: dict[str, int],
    jobs: list[Job],
    budgets: dict[str, dict[str, Any]],
    title: str,
    progress: dict[int, tuple[int, int]] | None = None,
    imports: dict[int, ImportProgress] | None = None,
) -> str:
    progress = progress or {}
    imports = imports or {}

    def where(j: Job) -> str:
        text = ""
        if j.id in progress:
            done, total = progress[j.id]
            text = f"parts {done}/{total}"
        if j.id in imports:
            text += (" · " if text else "") + imports[j.id].summary()
        if text:
            return text
        return j.remote_id or ""

    now = utcnow()
    flight = [j for j in jobs if j.state in IN_FLIGHT]
    recent = [j for j in jobs if j.state in TERMINAL][:30]
    cards = (
        "".join(
            f'<div class="card"><span class="muted">{escape(s)}</span><b>{n}</b></div>'
            for s, n in sorted(counts.items())
        )
        or '<div class="card muted">no jobs yet</div>'
    )
    gauges = "".join(
        f"<tr><td>{escape(name)}</td><td>{_gauge(b['quota_used'], b['quota_limit'])}</td>"
        f"<td>{_gauge(b['in_flight'], b['concurrency_limit'])}</td></tr>"
        for name, b in budgets.items()
    )
    flight_rows = (
        "".join(
            f"<tr><td>{j.id}</td><td>{escape(j.pipeline)}</td><td>{escape(j.kind)}</td>"
            f"<td>{_state(j.state)}</td><td>{escape(where(j))}</td>"
            f"<td>{j.attempts}</td><td>{_age(j.submitted_at or j.created_at)}</td></tr>"
            for j in flight
        )
        or '<tr><td colspan="7" class="muted">nothing in flight</td></tr>'
    )
    recent_rows = (
        "".join(
            f"<tr><td>{j.id}</td><td>{escape(j.pipeline)}</td><td>{_state(j.state)}</td>"
            f"<td>{_age(j.created_at, j.finished_at)}</td><td>{_num(j.result_rows)}</td>"
            f"<td>{_num(j.result_bytes)}</td>"
            f"<td>{escape(j.error or (j.result_path or ''))}</td></tr>"
            for j in recent
        )
        or '<tr><td colspan="7" class="muted">none yet</td></tr>'
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>{escape(title)}</title><style>{CSS}</style></head><body>
<h1>{escape(title)}</h1><div class="muted">{now:%Y-%m-%d %H:%M:%S} UTC · refreshes every 5 s ·
<a href="/api/jobs">/api/jobs</a> · <a href="/metrics">/metrics</a></div>
<h2>Jobs by state</h2><div class="cards" id="counts">{cards}</div>
<h2>Provider accounts</h2><table id="accounts"><tr><th>account</th><th>quota (rolling 30 days)</th>
<th>concurrency</th></tr>{gauges}</table>
<h2>In flight</h2><table id="in-flight"><tr><th>id</th><th>pipeline</th><th>kind</th><th>state</th>
<th>remote id / progress</th><th>attempt</th><th>age</th></tr>{flight_rows}</table>
<h2>Last 24 hours</h2>{_timeline(jobs, now)}
<h2>Recent jobs</h2><table id="recent"><tr><th>id</th><th>pipeline</th><th>state</th>
<th>duration</th><th>rows</th><th>bytes</th><th>result / error</th></tr>{recent_rows}</table>
</body></html>"""
