"""One daemon per SQLite ledger.

Two daemons on one SQLite file have no notion of ownership: the second one's start-up recovery
takes over the first one's live jobs (re-sending import batches, re-exporting parts) and each
enforces the provider limits on its own. SQLite is the single-host ledger, so a second daemon is
refused at start, naming the one that runs. The lock is `flock` on a file beside the ledger: the
kernel releases it when the holder exits however it exits (kill -9 included), so a crash never
leaves a stale lock behind; the file's content only names the holder for the message.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import make_url


class LedgerInUse(Exception):
    """Another process holds the ledger's daemon lock; the text names it."""


def lock_path(url: str) -> Path | None:
    """The daemon lock of a SQLite ledger file (None for other databases and in-memory SQLite)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    db = parsed.database
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db).with_name(Path(db).name + ".daemon-lock")


class DaemonLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise LedgerInUse naming the holder. Never blocks."""
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.path, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read(fd))
            os.close(fd)
            raise LedgerInUse(holder) from None
        except BaseException:
            os.close(fd)
            raise
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let the lock go (the file stays: unlinking it would race a starting daemon)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def _read(fd: int) -> dict[str, object]:
    try:
        raw = os.pread(fd, 4096, 0)
        data = json.loads(raw)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(holder: dict[str, object]) -> str:
    """'pid 123 on host-a since 2026-12-01T10:00:00+00:00', from what the holder wrote (a lock
    taken an instant ago may not have its content yet)."""
    pid, host, since = holder.get("pid"), holder.get("host"), holder.get("started")
    if not isinstance(pid, int):
        return "another process"
    text = f"pid {pid}"
    if isinstance(host, str) and host:
        text += f" on {host}"
    if isinstance(since, str) and since:
        text += f" since {since}"
    return text
