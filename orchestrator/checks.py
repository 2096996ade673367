"""Warnings about a config that is valid but probably not what was meant (`check-config` prints
them as `file:line: warning: …` and exits 0), and the up-front checks of `trigger` and
`jobs retry` on import sources."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from apscheduler.triggers.interval import IntervalTrigger

from orchestrator.config import Config, PipelineConfig, _Locator
from orchestrator.ledger.store import utcnow
from orchestrator.limits import QUOTA_WINDOW
from orchestrator.pipelines import next_fires
from orchestrator.providers import KINDS
from orchestrator.providers.sources import FileImportParams, file_sha256
from orchestrator.schedule import count_fires, parse_schedule

MIN_INTERVAL = timedelta(minutes=1)


def source_glob(p: PipelineConfig) -> str | None:
    """The file glob an import pipeline reads, None for exports and pipeline sources."""
    spec = KINDS.get(p.kind)
    if spec is None or not issubclass(spec.params_model, FileImportParams):
        return None
    source = p.params.get("source")
    return source if isinstance(source, str) else None


def _matches(pattern: str) -> bool:
    return any(Path(m).is_file() for m in glob.iglob(os.path.expanduser(pattern)))


def empty_glob(p: PipelineConfig) -> str | None:
    """The pipeline's source glob if it matches no file (else None)."""
    pattern = source_glob(p)
    return pattern if pattern is not None and not _matches(pattern) else None


def import_file_changed(params: dict[str, Any]) -> str | None:
    """Why an import job cannot be retried as it is (its file is gone or no longer the one it
    was queued for), or None. Blocking: hashes the file."""
    name, sha = params.get("file"), params.get("sha256")
    if not isinstance(name, str) or not isinstance(sha, str):
        return None
    path = Path(name)
    if not path.is_file():
        return f"its source file {path} is gone"
    if file_sha256(path) != sha:
        return (
            f"its source file {path} changed since the job was queued (sha256 {sha[:12]}…); "
            "`orchestrator trigger` imports the new version as a job of its own"
        )
    return None


def config_warnings(cfg: Config) -> list[str]:
    """`file:line: warning: …` lines for a valid config."""
    text = cfg.source.read_text(encoding="utf-8") if cfg.source else ""
    locator = _Locator(text)
    out: list[str] = []

    def warn(loc: tuple[Any, ...], message: str) -> None:
        out.append(f"{cfg.source}:{locator.line(loc)}: warning: {message}")

    now = utcnow()
    for i, p in enumerate(cfg.pipelines):
        if p.schedule and p.enabled:
            trigger = parse_schedule(p.schedule, cfg.daemon.timezone)
            fires = next_fires(trigger, now, 2)
            if not fires:
                warn(
                    ("pipelines", i, "schedule"), f"pipeline {p.name!r}: {p.schedule!r} never fires"
                )
            elif isinstance(trigger, IntervalTrigger) and trigger.interval < MIN_INTERVAL:
                warn(
                    ("pipelines", i, "schedule"),
                    f"pipeline {p.name!r}: {p.schedule!r} fires more than once a minute "
                    f"({count_fires(trigger, now, now + QUOTA_WINDOW):,} runs in 30 days)",
                )
        pattern = source_glob(p)
        if pattern is not None and not _matches(pattern):
            warn(
                ("pipelines", i, "params", "source"),
                f"pipeline {p.name!r}: {pattern!r} matches no file",
            )
    _quota_warnings(cfg, now, warn)
    return out


def _quota_warnings(cfg: Config, now: datetime, warn: Callable[..., None]) -> None:
    """Accounts whose schedules would submit more in 30 days than their quota allows: the
    configured `monthly_quota` less `quota_reserve` (`orchestrator quota` shows the provider's
    own limit next to the same projection)."""
    for name, prov in cfg.providers.items():
        if prov.monthly_quota is None:
            continue
        available = prov.monthly_quota - prov.quota_reserve
        runs = projected(cfg, name, now)
        if runs > available:
            warn(
                ("providers", name, "monthly_quota"),
                f"provider {name!r}: the schedules would submit {runs:,} jobs in 30 days, over "
                f"the {available:,} its quota allows (monthly_quota {prov.monthly_quota:,} less "
                f"quota_reserve {prov.quota_reserve:,})",
            )


def projected(cfg: Config, account: str, now: datetime) -> int:
    """Fires in the next 30 days of the enabled schedules that spend `account`'s quota: its
    pipelines (`account =`, else the kind's provider name) of kinds that use quota."""
    total = 0
    for p in cfg.pipelines:
        spec = KINDS.get(p.kind)
        if p.enabled and p.schedule and p.provider == account and spec and spec.uses_quota:
            total += count_fires(
                parse_schedule(p.schedule, cfg.daemon.timezone), now, now + QUOTA_WINDOW
            )
    return total


def online_quota_warnings(cfg: Config, checks: dict[str, dict[str, Any]]) -> list[str]:
    """`check-config --online`: the same 30-day projection against each provider's own monthly
    quota, where it reports one below our cap (or we set none)."""
    from orchestrator.quota import over_quota

    text = cfg.source.read_text(encoding="utf-8") if cfg.source else ""
    locator = _Locator(text)
    out = []
    now = utcnow()
    for name, result in checks.items():
        limit = result.get("monthly_quota") if result.get("ok") else None
        prov = cfg.providers.get(name)
        if not isinstance(limit, int) or prov is None:
            continue
        if prov.monthly_quota is not None and prov.monthly_quota <= limit:
            continue  # our own cap is the tighter one: config_warnings covered it
        warning = over_quota(projected(cfg, name, now), limit, prov.quota_reserve)
        if warning is not None:
            line = locator.line(("providers", name, "base_url"))
            out.append(
                f"{cfg.source}:{line}: warning: provider {name!r} (its own monthly quota): "
                f"{warning}"
            )
    return out
