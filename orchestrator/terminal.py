"""Text from outside (provider answers, file names, job errors) made safe to print. Pure.

A terminal obeys escape sequences in whatever it is given: an error body can retitle the window,
clear the screen, move the cursor over earlier lines or hide text. And rich renders `[...]` as
markup. So everything the CLI prints that it did not write itself goes through `printable`, and
into rich tables as `cell` (a Text, never parsed for markup).
"""

from __future__ import annotations

import re

from rich.text import Text

# ESC sequences whole (CSI, OSC, DCS/SOS/PM/APC strings, two-byte ones) and the 8-bit CSI, so no
# stray "[2J" is left behind; then every other control character.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"
    r"|\x1b[ -/]*[0-~]?"
    r"|\x9b[0-?]*[ -/]*[@-~]"
)
# C0 but tab and newline, DEL, C1; and the bidi controls that reorder what is shown
# (U+200E/F, U+202A-E, U+2066-9).
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(value: object, *, newlines: bool = True) -> str:
    """`value` as text with no escape sequence or control character left (tab and newline kept,
    or newline shown as ' ⏎ ' when `newlines` is False, for one-line output)."""
    text = _CONTROLS.sub("", _ESCAPES.sub("", str(value)))
    return text if newlines else text.replace("\n", " ⏎ ")


def cell(value: object) -> Text:
    """A rich table cell showing `value` literally: no markup, no escapes."""
    return Text("" if value is None else printable(value))
