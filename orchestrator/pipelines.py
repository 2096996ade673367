"""`orchestrator pipelines`: each configured pipeline with its schedule, next fire, last run and
health, from the config and the ledger alone (no provider is called, no secret is read).

Health, first match wins:
- `failing`: the pipeline's latest finished run FAILED (`consecutive_failures` ≥ 1; a cancelled job
  neither breaks nor extends a streak);
- `late`: enabled and scheduled, and its last success (or, never having succeeded, its first job)
  is more than two schedule intervals ago;
- `idle`: disabled, no schedule (runs only when triggered), or a schedule that never fires;
- `ok` otherwise (a scheduled pipeline with no job yet has nothing due).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

from orchestrator.config import Config, PipelineConfig
from orchestrator.domain import PipelineRuns
from orchestrator.ledger.store import Ledger, utcnow
from orchestrator.providers import KINDS
from orchestrator.schedule import parse_schedule
from orchestrator.templating import render

LATE_INTERVALS = 2
INTERVAL_SAMPLE = 8  # fire gaps looked at for a schedule's interval (cron gaps vary: weekends)
SHOW_FIRES = 5


def iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def next_fires(trigger: Any, now: datetime, n: int) -> list[datetime]:
    """The next `n` fire times strictly after `now` (fewer if the schedule runs out)."""
    out: list[datetime] = []
    prev: datetime | None = None
    at = now + timedelta(microseconds=1)
    while len(out) < n:
        nxt = trigger.get_next_fire_time(prev, at)
        if nxt is None:
            break
        out.append(nxt.astimezone(UTC))
        prev, at = nxt, nxt + timedelta(microseconds=1)
    return out


def nominal_interval(trigger: Any, now: datetime) -> timedelta | None:
    """The longest gap between the schedule's next few fires: a weekday-only cron's interval is
    the weekend, so a Monday is not called late for Saturday and Sunday."""
    fires = next_fires(trigger, now, INTERVAL_SAMPLE + 1)
    gaps = [b - a for a, b in pairwise(fires)]
    return max(gaps) if gaps else None


def health(
    *, scheduled: bool, runs: PipelineRuns | None, interval: timedelta | None, now: datetime
) -> str:
    """ok / failing / late / idle (module docstring). Pure."""
    if runs is not None and runs.consecutive_failures > 0:
        return "failing"
    if not scheduled:
        return "idle"
    if runs is None or interval is None:
        return "ok"
    since = runs.last_success_at or runs.first_created_at
    if since is not None and now - since > LATE_INTERVALS * interval:
        return "late"
    return "ok"


@dataclass(frozen=True, kw_only=True, slots=True)
class PipelineStatus:
    config: PipelineConfig
    runs: PipelineRuns | None
    next_fire: datetime | None
    interval: timedelta | None
    health: str

    def to_dict(self) -> dict[str, Any]:
        """The `pipelines --json` row."""
        p, r = self.config, self.runs
        last_run = None
        if r is not None and r.last_run_id is not None:
            state = r.last_run_state.value if r.last_run_state else None
            last_run = {
                "id": r.last_run_id,
                "state": state,
                "finished_at": iso(r.last_run_finished_at),
            }
        return {
            "name": p.name,
            "kind": p.kind,
            "provider": p.provider,
            "schedule": p.schedule,
            "enabled": p.enabled,
            "next_fire": iso(self.next_fire),
            "interval_seconds": self.interval.total_seconds() if self.interval else None,
            "last_run": last_run,
            "last_success_at": iso(r.last_success_at) if r else None,
            "consecutive_failures": r.consecutive_failures if r else 0,
            "health": self.health,
        }

    def metric_row(self) -> dict[str, Any]:
        """to_dict() plus the times as Unix timestamps, for /metrics."""
        out = self.to_dict()
        success = self.runs.last_success_at if self.runs else None
        out["last_success_ts"] = success.timestamp() if success else None
        out["next_fire_ts"] = self.next_fire.timestamp() if self.next_fire else None
        return out


def trigger_of(cfg: Config, p: PipelineConfig) -> Any:
    """The pipeline's trigger; None without a schedule, or with one that never fires."""
    if not p.schedule or never_fires(p.schedule, cfg.daemon.timezone):
        return None
    return parse_schedule(p.schedule, cfg.daemon.timezone)


@functools.cache
def never_fires(spec: str, timezone: str) -> bool:
    """A cron with no date at all (`0 0 30 2 *`). Finding that out scans APScheduler's calendar
    to its end (~0.1 s), so it is done once per schedule, not on every /metrics scrape. A
    five-field cron repeats within four years, so the answer does not depend on the date."""
    return not next_fires(parse_schedule(spec, timezone), utcnow(), 1)


def status_of(
    cfg: Config, p: PipelineConfig, runs: PipelineRuns | None, now: datetime
) -> PipelineStatus:
    trig = trigger_of(cfg, p) if p.enabled else None
    upcoming = next_fires(trig, now, 1) if trig is not None else []
    interval = nominal_interval(trig, now) if trig is not None else None
    return PipelineStatus(
        config=p,
        runs=runs,
        next_fire=upcoming[0] if upcoming else None,
        interval=interval,
        health=health(scheduled=trig is not None, runs=runs, interval=interval, now=now),
    )


async def statuses(
    cfg: Config, ledger: Ledger, now: datetime | None = None
) -> list[PipelineStatus]:
    """Every configured pipeline, in config order."""
    now = now or utcnow()
    runs = await ledger.pipeline_runs()
    return [status_of(cfg, p, runs.get(p.name), now) for p in cfg.pipelines]


def rendered_params(p: PipelineConfig, fire: datetime) -> dict[str, Any]:
    """The params a run fired at `fire` would be enqueued with (as scheduler.enqueue_run)."""
    params = render(p.params, fire)
    model = KINDS[p.kind].params_model
    return model.model_validate(params).model_dump(mode="json", exclude_none=True, by_alias=True)


def show(cfg: Config, status: PipelineStatus, now: datetime) -> dict[str, Any]:
    """`pipelines show NAME`: the row plus the next fires and the params of the next one. A dry
    run: nothing is enqueued or sent. An unscheduled pipeline's params are rendered for now, the
    fire time `trigger` would give it."""
    p = status.config
    trig = trigger_of(cfg, p) if p.enabled else None
    fires = next_fires(trig, now, SHOW_FIRES) if trig is not None else []
    fire = fires[0] if fires else now
    out = status.to_dict()
    out["timezone"] = cfg.daemon.timezone
    out["missed_runs"] = p.missed_runs
    out["next_fires"] = [iso(f) for f in fires]
    out["params_for"] = iso(fire)
    out["params"] = rendered_params(p, fire)
    return out


async def import_preview(
    ledger: Ledger, p: PipelineConfig, params: dict[str, Any]
) -> list[dict[str, Any]] | None:
    """For an import pipeline, the files its next run would find, each with whether it would be
    enqueued (not imported yet) — through the same expansion the scheduler uses, which only
    lists and hashes files and reads the ledger. None for other kinds."""
    from orchestrator.providers.sources import FileImportParams, expand_sources

    if not issubclass(KINDS[p.kind].params_model, FileImportParams):
        return None
    items = await expand_sources(ledger, p.name, params, "preview")
    taken = await ledger.taken_keys([key for key, _ in items])
    return [
        {"file": item["file"], "sha256": item["sha256"], "new": key not in taken}
        for key, item in items
    ]


_DAYS = {
    "0": "Sunday",
    "1": "Monday",
    "2": "Tuesday",
    "3": "Wednesday",
    "4": "Thursday",
    "5": "Friday",
    "6": "Saturday",
    "7": "Sunday",
    "sun": "Sunday",
    "mon": "Monday",
    "tue": "Tuesday",
    "wed": "Wednesday",
    "thu": "Thursday",
    "fri": "Friday",
    "sat": "Saturday",
}
_UNITS = {"s": "second", "m": "minute", "h": "hour", "d": "day"}


def _plural(n: int, unit: str) -> str:
    return f"{n} {unit}" + ("" if n == 1 else "s")


def _days(dow: str) -> str | None:
    if dow == "*":
        return None
    if "-" in dow and "," not in dow:
        a, b = dow.lower().split("-", 1)
        if a in _DAYS and b in _DAYS:
            return f"{_DAYS[a]} to {_DAYS[b]}"
    names = [_DAYS.get(d) for d in dow.lower().split(",")]
    return ", ".join(f"{n}s" for n in names if n) if all(names) else None


def schedule_in_words(spec: str | None, timezone: str = "UTC") -> str:
    """'every 15m' → 'every 15 minutes'; '0 6 * * MON' → 'at 06:00 on Mondays (UTC)'; a cron
    this does not phrase is given as it is."""
    if not spec:
        return "only when triggered"
    words = spec.split()
    if words[0].lower() == "every":
        parts = re.findall(r"(\d+)\s*([smhd])", spec.lower())
        return "every " + " ".join(_plural(int(n), _UNITS[u]) for n, u in parts)
    if len(words) != 5:
        return spec
    minute, hour, dom, month, dow = words
    if minute.startswith("*/") and hour == dom == month == dow == "*":
        return f"every {_plural(int(minute[2:]), 'minute')}"
    if not (minute.isdigit() and dom == month == "*"):
        return f"cron {spec} ({timezone})"
    if hour == "*":
        return f"hourly at :{int(minute):02d}"
    if not hour.isdigit():
        return f"cron {spec} ({timezone})"
    at = f"{int(hour):02d}:{int(minute):02d} ({timezone})"
    days = _days(dow)
    if dow == "*":
        return f"daily at {at}"
    return f"at {at}, {days}" if days else f"cron {spec} ({timezone})"
