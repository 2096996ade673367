from orchestrator.http import error_fields, redact, retry_after_seconds


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
