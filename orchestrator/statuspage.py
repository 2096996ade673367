"""The status page at `/`: one server-rendered HTML page (no build step, no script), refreshed
every 5 s — pipelines and their health first, then jobs in flight, a 24-hour chart, quota and
concurrency per account (our ledger's count next to the provider's own figure) and recent jobs."""

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
svg rect.ok{fill:#1a7f37} svg rect.bad{fill:#cf222e} svg .axis{stroke:#9aa1ab}
svg text{font-size:10px;fill:#6b7280}
td.wrap{white-space:normal;overflow-wrap:anywhere;word-break:break-word;min-width:24ch}
.h{padding:1px 8px;border-radius:9px;font-size:12px;color:#fff}
.h-ok{background:#1a7f37}.h-failing{background:#cf222e}.h-late{background:#bf8700}
.h-idle{background:#6e7781}
td.streak{color:#cf222e;font-weight:700} tr.failing td{background:#fff4f4}
#pipelines td{white-space:normal} .s,.h{white-space:nowrap}
.src{font-size:12px}
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
    """Jobs finished per hour over the last 24 hours, stacked: succeeded under failed or
    cancelled; with a count axis, an hour axis (UTC) and a legend."""
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
    left, base, height = 40, 80, 70  # the plot: x from `left`, bars grow up from y = `base`
    bars = []
    for i in range(24):
        h_ok, h_bad = height * ok[i] / peak, height * bad[i] / peak
        x = left + 4 + i * 22
        bars.append(
            f'<rect class="ok" x="{x}" y="{base - h_ok:.1f}" width="18" height="{h_ok:.1f}">'
            f"<title>{hours[i]:%H}:00 {ok[i]} succeeded</title></rect>"
            f'<rect class="bad" x="{x}" y="{base - h_ok - h_bad:.1f}" width="18" '
            f'height="{h_bad:.1f}">'
            f"<title>{hours[i]:%H}:00 {bad[i]} failed/cancelled</title></rect>"
        )
    ticks = sorted({0, peak // 2, peak})
    y_axis = "".join(
        f'<text x="{left - 6}" y="{base - height * t / peak + 3:.1f}" text-anchor="end">{t}</text>'
        for t in ticks
    )
    x_axis = "".join(
        f'<text x="{left + 4 + i * 22}" y="{base + 14}">{hours[i]:%H}</text>'
        for i in range(0, 24, 3)
    )
    axes = (
        f'<g id="chart-axes"><line class="axis" x1="{left}" y1="{base - height}" x2="{left}" '
        f'y2="{base}"/><line class="axis" x1="{left}" y1="{base}" x2="{left + 4 + 24 * 22}" '
        f'y2="{base}"/>{y_axis}{x_axis}'
        f'<text x="{left + 4 + 24 * 22}" y="{base + 14}" text-anchor="end">hour (UTC)</text>'
        f'<text x="{left}" y="{base - height - 6}">jobs finished per hour</text></g>'
    )
    legend = (
        f'<g id="chart-legend" transform="translate({left},{base + 24})">'
        '<rect class="ok" width="10" height="10"/><text x="14" y="9">succeeded</text>'
        '<rect class="bad" x="90" width="10" height="10"/>'
        '<text x="104" y="9">failed or cancelled</text></g>'
    )
    return (
        f'<svg width="{left + 24 * 22 + 40}" height="{base + 40}" role="img" '
        f'aria-label="jobs finished per hour, last 24 hours">{axes}{"".join(bars)}{legend}</svg>'
    )


def _when(iso_at: str | None) -> str:
    return "—" if iso_at is None else escape(iso_at.replace("T", " ").removesuffix("Z")) + " UTC"


def _pipelines(rows: list[dict[str, Any]]) -> str:
    """The pipelines section: health badge, schedule in words, next fire, last success, the
    failure streak (highlighted), the last run."""
    if not rows:
        return '<tr><td colspan="8" class="muted">no pipelines configured</td></tr>'
    out = []
    for r in rows:
        n = r["consecutive_failures"]
        streak = f'<td class="streak">{n} in a row</td>' if n else "<td>0</td>"
        last = r["last_run"]
        last_cell = f"{last['id']} {_state(JobState(last['state']))}" if last else "—"
        schedule = escape(r["schedule_words"]) + ("" if r["enabled"] else " (disabled)")
        out.append(
            f'<tr class="{escape(r["health"])}"><td>{escape(r["name"])}</td>'
            f'<td><span class="h h-{escape(r["health"])}">{escape(r["health"])}</span></td>'
            f'<td title="{escape(r["schedule"] or "")}">{schedule}</td>'
            f"<td>{_when(r['next_fire'])}</td><td>{_when(r['last_success_at'])}</td>"
            f"{streak}<td>{last_cell}</td><td>{escape(r['kind'])} · {escape(r['provider'])}</td>"
            "</tr>"
        )
    return "".join(out)


def _quota_cells(b: dict[str, Any]) -> str:
    """Our ledger's count and the provider's own figure, each labelled with its source: they
    differ by whatever else spends the account's quota (other tools, other users)."""
    ledger = _gauge(b["quota_used"], b["quota_limit"])
    ours = f'{ledger}<div class="src muted">ledger: our submissions in the rolling 30 days</div>'
    left, limit = b.get("provider_left"), b.get("provider_limit")
    if left is None:
        theirs = '<span class="muted">not reported by the provider</span>'
    else:
        theirs = (
            f"{left:,} left"
            + (f" of {limit:,}" if limit is not None else "")
            + '<div class="src muted">provider: its own figure at the last limits check</div>'
        )
    return f"<td>{ours}</td><td>{theirs}</td>"


def _replicas(view: dict[str, Any] | None, me: str | None) -> str:
    """The daemons sharing the ledger and the accounts each holds; this one is marked."""
    if not view or not view.get("replicas"):
        return '<tr><td colspan="7" class="muted">none</td></tr>'
    from orchestrator.replicas import table_rows

    return "".join(
        "<tr>"
        + "".join(
            f"<td>{escape(c)}{' <b>(this one)</b>' if i == 0 and c == me else ''}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in table_rows(view)
    )


def render(
    *,
    counts: dict[str, int],
    jobs: list[Job],
    budgets: dict[str, dict[str, Any]],
    title: str,
    progress: dict[int, tuple[int, int]] | None = None,
    pipelines: list[dict[str, Any]] | None = None,
    imports: dict[int, ImportProgress] | None = None,
    replicas: dict[str, Any] | None = None,
    replica: str | None = None,
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
        f"<tr><td>{escape(name)}</td>{_quota_cells(b)}"
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
            f'<td class="wrap">{escape(j.error or (j.result_path or ""))}</td></tr>'
            for j in recent
        )
        or '<tr><td colspan="7" class="muted">none yet</td></tr>'
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>{escape(title)}</title><style>{CSS}</style></head><body>
<h1>{escape(title)}</h1><div class="muted">{now:%Y-%m-%d %H:%M:%S} UTC · refreshes every 5 s ·
<a href="/api/jobs">/api/jobs</a> · <a href="/metrics">/metrics</a></div>
<h2>Pipelines</h2><table id="pipelines"><tr><th>pipeline</th><th>health</th><th>schedule</th>
<th>next fire</th><th>last success</th><th>failures</th><th>last run</th><th>kind · account</th>
</tr>{_pipelines(pipelines or [])}</table>
<h2>Jobs by state</h2><div class="cards" id="counts">{cards}</div>
<h2>Provider accounts</h2><table id="accounts"><tr><th>account</th>
<th>quota used (our ledger)</th><th>quota left (the provider)</th><th>concurrency</th></tr>
{gauges}</table>
<h2>Replicas</h2><table id="replicas"><tr><th>replica</th><th>host</th><th>pid</th>
<th>state</th><th>started</th><th>heartbeat</th><th>accounts</th></tr>
{_replicas(replicas, replica)}</table>
<h2>In flight</h2><table id="in-flight"><tr><th>id</th><th>pipeline</th><th>kind</th><th>state</th>
<th>remote id / progress</th><th>attempt</th><th>age</th></tr>{flight_rows}</table>
<h2>Last 24 hours</h2>{_timeline(jobs, now)}
<h2>Recent jobs</h2><table id="recent"><tr><th>id</th><th>pipeline</th><th>state</th>
<th>duration</th><th>rows</th><th>bytes</th><th>result / error</th></tr>{recent_rows}</table>
</body></html>"""
