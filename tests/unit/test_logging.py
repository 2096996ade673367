"""The log set-up: JSON tracebacks carry no local variables, and reconfiguring takes effect for
loggers already used (they are cached on first use)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from orchestrator.logging import configure

SECRET = "sk-live-must-not-be-logged"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _fail_with_secret_in_locals() -> None:
    api_key = SECRET
    headers = {"apikey": api_key}
    raise RuntimeError(f"request failed ({len(headers)} headers)")


def test_json_traceback_has_the_frames_but_not_the_locals(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure(json=True)
    log = structlog.get_logger("test.tracebacks")
    try:
        _fail_with_secret_in_locals()
    except RuntimeError:
        log.exception("call_failed")
    out = capsys.readouterr().err
    assert SECRET not in out
    (line,) = out.strip().splitlines()
    event = json.loads(line)
    assert event["event"] == "call_failed"
    (exc,) = event["exception"]
    assert exc["exc_type"] == "RuntimeError"
    assert "_fail_with_secret_in_locals" in [f["name"] for f in exc["frames"]]
    assert all("locals" not in f for f in exc["frames"])


def test_reconfiguring_applies_to_a_logger_already_used(
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = structlog.get_logger("test.reconfigure")
    configure(json=False, level="INFO")
    log.info("console_line")
    log.debug("dropped_at_info")
    configure(json=True, level="DEBUG")
    log.debug("json_line", n=1)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    assert "console_line" in lines[0] and not lines[0].startswith("{")
    assert json.loads(lines[1]) | {"timestamp": None} == {
        "event": "json_line",
        "n": 1,
        "level": "debug",
        "logger": "test.reconfigure",
        "timestamp": None,
    }
