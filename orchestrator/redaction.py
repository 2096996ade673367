"""Secret redaction, in one place: every text that came from outside (provider answers, error
bodies, exception text) passes through `redact` before it is stored or shown, and every log line
is redacted as it is formatted (logging.py).

A provider that echoes a key may echo it in another form than the one we sent, so each secret is
searched for raw, URL-encoded (quote and quote_plus), JSON-escaped, and base64-encoded (standard
and URL-safe alphabets, at each of the three byte alignments a secret can have inside a longer
base64 text such as `Basic base64(user:key)`).

The registry is process-wide: HttpClient registers its account's secrets when it is built (and
the daemon registers the config's), so exceptions raised anywhere and log lines written by any
module are redacted without being handed the secrets. Secrets shorter than MIN_SECRET characters
are not redacted (they would blank out ordinary words); a key that short is refused nowhere else,
but none of our providers issues one.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus

MASK = "***"
MIN_SECRET = 6
MIN_BASE64_CORE = 8  # shorter base64 fragments would match ordinary text


def _base64_cores(raw: bytes) -> set[str]:
    """The characters of base64(prefix + raw + suffix) that depend on `raw` alone, for each of
    the three alignments of `raw` (k = 0, 1, 2 bytes before it), in both alphabets."""
    out: set[str] = set()
    for k in range(3):
        encoded = base64.b64encode(b"\0" * k + raw).decode().rstrip("=")
        start = -(-8 * k // 6)  # chars that also hold bits of the prefix
        end = (8 * (k + len(raw))) // 6  # the last char may hold bits of what follows
        core = encoded[start:end]
        if len(core) >= MIN_BASE64_CORE:
            out.add(core)
            out.add(core.replace("+", "-").replace("/", "_"))
    return out


def forms(secret: str) -> set[str]:
    """Every spelling of `secret` we search for."""
    found = {
        secret,
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        json.dumps(secret)[1:-1].replace("/", "\\/"),  # encoders that escape '/' too
        secret.replace("/", "\\/"),
    }
    found |= _base64_cores(secret.encode())
    return {f for f in found if len(f) >= MIN_SECRET}


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._forms: tuple[str, ...] = ()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        new = {s for s in secrets if s and len(s) >= MIN_SECRET} - self._secrets
        if not new:
            return
        with self._lock:
            self._secrets |= new
            every = set(self._forms)
            for s in new:
                every |= forms(s)
            ordered = tuple(sorted(every, key=len, reverse=True))  # longest spelling first
            self._pattern = re.compile("|".join(re.escape(f) for f in ordered))
            self._forms = ordered

    def clear(self) -> None:
        """Forget every secret (tests that build many configs in one process)."""
        with self._lock:
            self._secrets, self._forms, self._pattern = set(), (), None

    def redact(self, text: str) -> str:
        # A plain substring test per spelling (~3.5 µs for 8 secrets on a 400-byte log line) is
        # twice as fast as the regex, and almost every text holds none of them.
        pattern = self._pattern
        if pattern is None or not any(f in text for f in self._forms):
            return text
        return pattern.sub(MASK, text)

    def redact_any(self, value: Any) -> Any:
        """Strings anywhere in a parsed JSON value (keys too) redacted; a new value."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {self.redact_any(k): self.redact_any(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.redact_any(v) for v in value]
        return value

    def redact_bytes(self, data: bytes) -> bytes:
        if self._pattern is None:
            return data
        return self.redact(data.decode("utf-8", "surrogateescape")).encode(
            "utf-8", "surrogateescape"
        )


SECRETS = Redactor()


def register(secrets: Iterable[str]) -> None:
    SECRETS.add(secrets)


def redact(text: str) -> str:
    return SECRETS.redact(text)


def redact_any(value: Any) -> Any:
    return SECRETS.redact_any(value)
