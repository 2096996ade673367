"""Notification pieces that need no network: URL redaction, backoff, filters, event shapes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import SecretStr

from orchestrator.config import NotifyConfig
from orchestrator.notify import (
    MAX_ATTEMPTS,
    backoff,
    failed_event,
    quota_low_event,
    redact_text,
    redact_url,
    target_id,
    wants,
)

URL = "https://hooks.slack.com/services/T000/B000/XXXXsecretXXXX"
AT = datetime(2026, 12, 1, 22, 0, tzinfo=UTC)


def test_redacted_url_keeps_host_hides_path_and_names_the_target() -> None:
    shown = redact_url(URL)
    assert shown == f"https://hooks.slack.com/…#{target_id(URL)}"
    assert "secret" not in shown and "T000" not in shown
    assert redact_url("http://127.0.0.1:9000/hook?token=abc").startswith("http://127.0.0.1:9000/…#")


def test_errors_quoting_the_url_or_its_path_are_redacted() -> None:
    text = f"POST {URL} failed; path /services/T000/B000/XXXXsecretXXXX; again {URL}"
    out = redact_text(text, [URL])
    assert "secret" not in out and out.count(redact_url(URL)) == 3
    assert redact_text("token=abcd1234", ["http://h/x?token=abcd1234"]) == (
        f"{redact_url('http://h/x?token=abcd1234')}"
    )


def test_backoff_doubles_up_to_an_hour() -> None:
    assert [backoff(n).total_seconds() for n in (1, 2, 3)] == [5, 10, 20]
    assert backoff(MAX_ATTEMPTS) == timedelta(hours=1) == backoff(10_000)


def test_filters_by_event_and_pipeline() -> None:
    row = {
        "id": 7,
        "pipeline": "bad",
        "kind": "clari.forecast_export",
        "provider": "clari",
        "attempts": 3,
        "error": "clari: remote job ended FAILED",
        "at": AT,
    }
    failed = failed_event(row)
    quota = quota_low_event("clari", 2, 5, AT)
    everything = NotifyConfig(url=SecretStr(URL))
    only_bad = NotifyConfig(url=SecretStr(URL), on=["failed"], pipelines=["bad"])
    only_other = NotifyConfig(url=SecretStr(URL), pipelines=["other"])
    assert wants(everything, failed) and wants(everything, quota)
    assert wants(only_bad, failed) and not wants(only_bad, quota)
    assert not wants(only_other, failed)
    assert wants(only_other, quota)  # account events belong to no pipeline


def test_payload_is_slack_text_plus_fields() -> None:
    row = {
        "id": 7,
        "pipeline": "bad",
        "kind": "k",
        "provider": "clari",
        "attempts": 3,
        "error": "boom",
        "at": AT,
    }
    body = failed_event(row).payload()
    assert body["text"].startswith(":x: pipeline bad failed: job 7 after 3 attempt(s): boom")
    assert body | {"text": ""} == {
        "text": "",
        "event": "failed",
        "pipeline": "bad",
        "job_id": 7,
        "kind": "k",
        "provider": "clari",
        "attempts": 3,
        "error": "boom",
        "at": "2026-12-01T22:00:00Z",
    }
    assert quota_low_event("clari", 2, 5, AT).key == "quota_low:clari:2026-12-01"
