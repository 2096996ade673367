"""Text from outside made safe to print: escape sequences and control characters removed
whole, everything else (markup included) kept as written."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from orchestrator.terminal import cell, printable


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b]0;retitled\x07rest", "rest"),  # OSC window title, BEL-terminated
        ("\x1b]8;;https://evil.example\x1b\\link\x1b]8;;\x1b\\", "link"),  # OSC 8 hyperlink
        ("\x1b[2J\x1b[Hclear", "clear"),  # CSI clear screen, cursor home
        ("\x1b[38;5;196mred\x1b[0m", "red"),
        ("\x9b2Jc1", "c1"),  # the 8-bit CSI
        ("\x1bPq#0;2;0;0;0\x1b\\sixel", "sixel"),  # DCS string
        ("\x1bcreset", "reset"),
        ("ok\rforged", "okforged"),
        ("a\x00b\x7fc\x85d", "abcd"),
        ("\u202egnp.exe", "gnp.exe"),
        ("[bold red]x[/] [link=https://e]y[/link]", "[bold red]x[/] [link=https://e]y[/link]"),
        ("two\nlines\tand a tab", "two\nlines\tand a tab"),
        ("héllo ✓ 日本", "héllo ✓ 日本"),
    ],
)
def test_printable(raw: str, shown: str) -> None:
    assert printable(raw) == shown


def test_one_line_form_marks_newlines() -> None:
    assert printable("a\nb", newlines=False) == "a ⏎ b"


@given(st.text())
def test_nothing_a_terminal_obeys_is_left(text: str) -> None:
    out = printable(text)
    assert not any((ord(c) < 32 and c not in "\t\n") or 0x7F <= ord(c) <= 0x9F for c in out), repr(
        out
    )


def test_a_cell_is_never_markup() -> None:
    console = Console(width=80, record=True, color_system=None)
    console.print(cell("[bold red]x[/bold red] \x1b[2J"))
    assert console.export_text().strip() == "[bold red]x[/bold red]"
