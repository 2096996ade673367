"""Records in a result, counted as they stream by: feed chunks, read the count at the end.

Pure and incremental (memory bounded by a few flags, whatever the file's size):
- CSV: records as a CSV parser sees them (RFC 4180 quoting: a line break inside a quoted field
  does not end a record; `""` is a quote inside a quoted field), empty lines skipped, the
  header row not counted.
- JSON: the elements of the top-level array, or of the first array under a records key
  (`activities`, `items`, `rows`, `data`, `records`) of a top-level object.
- JSON Lines: lines holding something other than whitespace.
Outside quotes and strings the work is done by C-level bytes methods and regexes, so a chunk
without quotes costs a few passes over memory, not a Python loop per byte.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

RECORD_KEYS = frozenset({b"activities", b"items", b"rows", b"data", b"records"})
_BLANK_LINE = re.compile(rb"(?<=\n)\r?\n")  # a line break right after another: an empty line
_JSON_STRUCT = re.compile(rb'["\[\]{},]')
_JSON_STRING_END = re.compile(rb'["\\]')
_WS = b" \t\r\n"


class RowCounter(Protocol):
    def feed(self, data: bytes) -> None: ...

    def result(self) -> int | None:
        """The count once everything was fed (None: the data was not of the expected shape)."""
        ...


class CsvCounter:
    """Data records of a CSV (header excluded)."""

    def __init__(self) -> None:
        self.records = 0
        self._quoted = False  # inside a quoted field
        self._content = False  # the current record has something in it

    def feed(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end:
            quote = data.find(b'"', pos)
            stop = end if quote < 0 else quote
            if self._quoted:
                if quote < 0:
                    return  # all of it inside the quoted field
                self._quoted = False
            else:
                self._outside(data, pos, stop)
                if quote < 0:
                    return
                self._quoted = self._content = True
            pos = stop + 1

    def _outside(self, data: bytes, start: int, stop: int) -> None:
        seg = data[start:stop]
        breaks = seg.count(b"\n")
        if not breaks:
            if seg.strip(b"\r"):
                self._content = True
            return
        first = seg.index(b"\n")
        empty = len(_BLANK_LINE.findall(seg))
        if not self._content and not seg[:first].strip(b"\r"):
            empty += 1  # the first break ends a record with nothing in it
        self.records += breaks - empty
        self._content = bool(seg[seg.rindex(b"\n") + 1 :].strip(b"\r"))

    def result(self) -> int:
        total = self.records + (1 if self._content else 0)
        return max(0, total - 1)


class JsonLinesCounter:
    def __init__(self) -> None:
        self.records = 0
        self._content = False

    def feed(self, data: bytes) -> None:
        lines = data.split(b"\n")
        for line in lines[:-1]:
            if self._content or line.strip(_WS):
                self.records += 1
            self._content = False
        if lines[-1].strip(_WS):
            self._content = True

    def result(self) -> int:
        return self.records + (1 if self._content else 0)


class JsonRecordsCounter:
    """Elements of the top-level array, or of a records array of the top-level object."""

    def __init__(self) -> None:
        self.depth = 0
        self.target = 0  # depth of the array being counted (0: none found yet)
        self._counting = False  # inside the target array
        self.commas = 0
        self.nonempty = False
        self._awaiting_first = False  # just inside the target array: is it empty?
        self._in_string = False
        self._escape = False
        self._string: bytearray | None = None  # a depth-1 string of an object (a key, maybe)
        self._last_string = b""
        self._top: bytes = b""  # "[" or "{" once seen
        self._bad = False

    def feed(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end and not self._bad:
            if self._in_string:
                pos = self._string_part(data, pos)
                continue
            if self._awaiting_first:
                while pos < end and data[pos] in _WS:
                    pos += 1
                if pos == end:
                    return
                self._awaiting_first = False
                self.nonempty = data[pos : pos + 1] != b"]"
            m = _JSON_STRUCT.search(data, pos)
            if m is None:
                return
            pos = self._token(data, m.start())

    def _string_part(self, data: bytes, pos: int) -> int:
        if self._escape:
            self._escape = False
            self._keep(data[pos : pos + 1])
            return pos + 1
        m = _JSON_STRING_END.search(data, pos)
        if m is None:
            self._keep(data[pos:])
            return len(data)
        at = m.start()
        self._keep(data[pos:at])
        if data[at : at + 1] == b"\\":
            self._escape = True
            self._keep(b"\\")
            return at + 1
        self._in_string = False
        if self._string is not None:
            self._last_string = bytes(self._string)
            self._string = None
        return at + 1

    def _keep(self, part: bytes) -> None:
        if self._string is not None and len(self._string) < 64:
            self._string += part[: 64 - len(self._string)]

    def _token(self, data: bytes, at: int) -> int:
        c = data[at : at + 1]
        if c == b'"':
            self._in_string = True
            if self.depth == 1 and self._top == b"{":
                self._string = bytearray()
        elif c in (b"[", b"{"):
            if self.depth == 0:
                self._top = c
            self.depth += 1
            opens_target = (
                self.target == 0
                and c == b"["
                and (
                    (self.depth == 1)
                    or (self.depth == 2 and self._top == b"{" and self._last_string in RECORD_KEYS)
                )
            )
            if opens_target:
                self.target = self.depth
                self._counting = self._awaiting_first = True
        elif c in (b"]", b"}"):
            if self.depth == self.target:
                self._counting = False
            self.depth -= 1
            if self.depth < 0:
                self._bad = True
        elif c == b"," and self._counting and self.depth == self.target:
            self.commas += 1
        return at + 1

    def result(self) -> int | None:
        if self._bad or self.target == 0 or self.depth != 0:
            return None
        return self.commas + 1 if self.nonempty else 0


def counter_for(ext: str) -> RowCounter | None:
    if ext == "csv":
        return CsvCounter()
    if ext == "json":
        return JsonRecordsCounter()
    if ext == "jsonl":
        return JsonLinesCounter()
    return None


def count_file(path: Path, ext: str, chunk: int = 1 << 20) -> int | None:
    """Records in a result file, read in chunks (blocking: call it from a thread)."""
    counter = counter_for(ext)
    if counter is None:
        return None
    with path.open("rb") as f:
        while data := f.read(chunk):
            counter.feed(data)
    return counter.result()
