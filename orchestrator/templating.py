"""Relative dates in pipeline params, rendered against a run's fire time. Pure.

A string param may hold `{{ expr }}` placeholders:

    {{ day }}            the fire date, 2026-11-22      {{ day-1 }}  the day before
    {{ week_start }}     Monday of the fire week        {{ week_start-1 }}  Monday a week before
    {{ month_start }}    first day of the fire month    {{ month_start-1 }}  of the month before
    {{ quarter }}        fiscal quarter, 2026_Q4        {{ quarter-1 }}  2026_Q3
    {{ fire }}           the fire time itself, 2026-11-22T06:00:00Z

Dates render as YYYY-MM-DD; append `| datetime` for midnight UTC in ISO 8601 (2026-11-21T00:00:00Z).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

_PLACEHOLDER = re.compile(r"\{\{\s*(.*?)\s*\}\}")
_EXPR = re.compile(
    r"^(?P<base>day|week_start|month_start|quarter|fire)\s*(?:(?P<sign>[+-])\s*(?P<n>\d+))?"
    r"\s*(?:\|\s*(?P<fmt>date|datetime))?$"
)


class TemplateError(ValueError):
    pass


def _shift_month(d: date, months: int) -> date:
    index = d.year * 12 + (d.month - 1) + months
    return date(index // 12, index % 12 + 1, 1)


def _render_one(expr: str, fire: datetime) -> str:
    try:
        return _render_expr(expr, fire)
    except TemplateError:
        raise
    except (OverflowError, ValueError):  # an offset past year 1 or 9999, or digits past int's
        raise TemplateError(
            f"date expression {{{{ {expr[:40]} }}}} is out of range (years 1-9999)"
        ) from None


def _render_expr(expr: str, fire: datetime) -> str:
    m = _EXPR.match(expr)
    if m is None:
        raise TemplateError(
            f"unknown date expression {{{{ {expr} }}}}: use day, week_start, month_start, "
            "quarter or fire, optionally -N/+N and '| datetime'"
        )
    n = int(m["n"] or 0) * (-1 if m["sign"] == "-" else 1)
    fire_utc = fire.astimezone(UTC)
    today = fire_utc.date()
    base = m["base"]
    if base == "fire":
        return fire_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    if base == "quarter":
        q_index = today.year * 4 + (today.month - 1) // 3 + n
        if not date.min.year <= q_index // 4 <= date.max.year:
            raise OverflowError(q_index)
        return f"{q_index // 4}_Q{q_index % 4 + 1}"
    if base == "day":
        d = today + timedelta(days=n)
    elif base == "week_start":
        d = today - timedelta(days=today.weekday()) + timedelta(weeks=n)
    else:
        d = _shift_month(today.replace(day=1), n)
    if m["fmt"] == "datetime":
        return f"{d.isoformat()}T00:00:00Z"
    return d.isoformat()


def render_str(value: str, fire: datetime) -> str:
    return _PLACEHOLDER.sub(lambda m: _render_one(m.group(1), fire), value)


def render(value: Any, fire: datetime) -> Any:
    """Render every placeholder in a params structure (dicts, lists, strings)."""
    if isinstance(value, str):
        return render_str(value, fire)
    if isinstance(value, dict):
        return {k: render(v, fire) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, fire) for v in value]
    return value
