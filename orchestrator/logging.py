"""structlog set-up: JSON lines when stderr is not a terminal (systemd, Docker), pretty on a TTY;
the stdlib loggers of aiohttp, SQLAlchemy, Alembic and APScheduler go through the same pipeline.
Tracebacks are rendered without local variables (they could hold secrets)."""

from __future__ import annotations

import json as json_module
import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

from orchestrator.redaction import redact
from orchestrator.terminal import printable

# Tracebacks as data in JSON lines, without local variables: structlog shows them by default,
# and a frame that made a request holds its headers (the API key) in its locals.
_dict_tracebacks = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
)


def _dumps(event: dict[str, Any], **kw: Any) -> str:
    """One log line, with orjson (a whole INFO line measured 26 µs with the standard encoder,
    21 µs with this; the daemon writes two per job); the standard encoder for what orjson
    refuses (integers beyond 64 bits). Objects neither knows go through structlog's fallback
    (`default`, repr)."""
    try:
        return orjson.dumps(event, default=kw.get("default")).decode()
    except orjson.JSONEncodeError:
        return json_module.dumps(event, **kw)


class RedactingFormatter(structlog.stdlib.ProcessorFormatter):
    """Every line, whoever logged it (our modules, aiohttp, tracebacks), with the registered
    secrets masked in each of their encodings (orchestrator/redaction.py): the last place a key
    echoed by a provider could slip through."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def _printable_values(_: Any, __: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    """On a terminal, text from outside in a log line (a provider's error) is shown, never
    obeyed as escape sequences. (JSON lines escape control characters themselves.)"""
    return {k: printable(v) if isinstance(v, str) else v for k, v in event.items()}


def configure(*, json: bool | None = None, level: str = "INFO") -> None:
    """May be called again (tests do): the bound loggers are cached on first use, so their own
    chain is the same in every mode; what differs (renderer, tracebacks, level) lives in the
    stdlib handler and root logger, which are replaced here each time."""
    if json is None:
        json = not sys.stderr.isatty()
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: list[structlog.types.Processor]
    if json:
        renderer = [_dict_tracebacks, structlog.processors.JSONRenderer(serializer=_dumps)]
    else:
        renderer = [
            _printable_values,
            structlog.dev.ConsoleRenderer(
                exception_formatter=structlog.dev.plain_traceback, colors=True
            ),
        ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,  # drop below-level events before any work
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # A logger is built once per module, not on every call (that was ~4% of the daemon's
        # time at 1,000 jobs/s, mostly for debug lines that were then dropped).
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        RedactingFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiohttp.access", "apscheduler", "alembic", "sqlalchemy"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
