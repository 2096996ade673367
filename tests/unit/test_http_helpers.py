import pytest

from orchestrator.http import error_fields, loads_json, redact, retry_after_seconds


def test_retry_after_forms() -> None:
    now = 1_800_000_000.0
    assert retry_after_seconds({"Retry-After": "3"}, now) == 3.0
    assert retry_after_seconds({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, now) == 0.0
    assert retry_after_seconds({"X-RateLimit-Reset": str(now + 5)}, now) == 5.0
    assert retry_after_seconds({"X-RateLimit-Reset": str(int((now + 7) * 1000))}, now) == 7.0
    assert retry_after_seconds({"X-RateLimit-Reset": "12"}, now) == 12.0
    assert retry_after_seconds({}, now) is None


def test_error_body_shapes() -> None:
    assert error_fields({"code": "export_monthly_quota_reached", "message": "m"}) == (
        "export_monthly_quota_reached",
        "m",
    )
    assert error_fields({"errors": [{"code": "x", "message": "y", "status": "400"}]}) == ("x", "y")
    assert error_fields({"success": False, "error": {"code": "E", "message": "z"}}) == ("E", "z")
    assert error_fields({"message": "Invalid authentication credentials"}) == (
        None,
        "Invalid authentication credentials",
    )


def test_redact() -> None:
    assert redact("key sk-123456 leaked", ["sk-123456"]) == "key *** leaked"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", None),
        (b"  \n", None),
        (b'{"jobId": "a1", "n": 3}', {"jobId": "a1", "n": 3}),
        (b'[{"status": "DONE"}]', [{"status": "DONE"}]),
        (b'{"id": 9223372036854775807}', {"id": 9223372036854775807}),  # int64 max: exact
        (b'{"x": NaN}', "nan"),
        (b'{"name": "Zo\\u00eb"}', {"name": "Zoë"}),
    ],
)
def test_loads_json_parses_what_the_standard_parser_parses(body: bytes, expected: object) -> None:

    got = loads_json(body)
    if expected == "nan":
        assert got["x"] != got["x"]  # NaN
    else:
        assert got == expected


def test_loads_json_rejects_what_is_not_json() -> None:

    with pytest.raises(ValueError):
        loads_json(b"<html>502 Bad Gateway</html>")
