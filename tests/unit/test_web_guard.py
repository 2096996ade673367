"""Which Host headers the status server answers to, and which Authorization headers carry its
token. Pure."""

from __future__ import annotations

import base64

import pytest

from orchestrator.web import host_allowed, token_matches

ANY = "0.0.0.0"  # noqa: S104 (a bind address under test, nothing is bound)


@pytest.mark.parametrize(
    ("header", "bind", "allowed", "ok"),
    [
        ("127.0.0.1:8787", "127.0.0.1", (), True),
        ("localhost:8787", "127.0.0.1", (), True),
        ("LOCALHOST.", "127.0.0.1", (), True),
        ("[::1]:8787", "127.0.0.1", (), True),
        ("attacker.example", "127.0.0.1", (), False),
        ("attacker.example:8787", "127.0.0.1", (), False),
        ("127.0.0.1.attacker.example", "127.0.0.1", (), False),
        ("10.0.0.5", "127.0.0.1", (), False),
        ("", "127.0.0.1", (), False),
        (None, "127.0.0.1", (), False),
        ("[::1", "::1", (), False),
        ("10.0.0.5:8787", ANY, (), True),  # wildcard: any address literal
        ("[fe80::1]:8787", "::", (), True),
        ("status.example.net", ANY, (), False),
        ("Status.Example.NET:443", ANY, ("status.example.net",), True),
        ("10.0.0.5", "10.0.0.5", (), True),
        ("10.0.0.6", "10.0.0.5", (), False),
        ("localhost", "10.0.0.5", (), False),
        ("anything", "10.0.0.5", ("*",), True),
        (None, "10.0.0.5", ("*",), True),
    ],
)
def test_host_allowed(header: str | None, bind: str, allowed: tuple[str, ...], ok: bool) -> None:
    assert host_allowed(header, bind, allowed) is ok


def basic(user_pass: str) -> str:
    return "Basic " + base64.b64encode(user_pass.encode()).decode()


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("Bearer s3cret", True),
        ("bearer   s3cret ", True),
        (basic("admin:s3cret"), True),
        (basic(":s3cret"), True),
        (basic("s3cret"), False),  # no password part
        (basic("admin:s3cre"), False),
        ("Basic !!notbase64", False),
        ("Bearer s3cre", False),
        ("Bearer s3crett", False),
        ("s3cret", False),
        ("Token s3cret", False),
        ("Bearer ", False),
        ("", False),
        (None, False),
    ],
)
def test_token_matches(header: str | None, ok: bool) -> None:
    assert token_matches(header, "s3cret") is ok
