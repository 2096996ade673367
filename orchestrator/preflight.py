"""What `run` would trip on in its environment, found before it starts: a ledger or output
directory it cannot create or write, an output "directory" that is a file, a database driver
that is not installed or not asyncio, a status port another process holds.

Each finding is one line, `file:line: key: message`, naming the key of the config file to look
at. `check-config` prints them all (a busy port only as a warning: it may be the running daemon's
own); `run` refuses to start on any error, with exit 2 and no traceback.
"""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config import Config

POSTGRES_EXTRA = "pip install 'orchestrator[postgres]'"


@dataclass(frozen=True, kw_only=True, slots=True)
class Finding:
    where: str  # file:line
    key: str  # dotted config key, e.g. "output.dir"
    message: str
    warning: bool = False

    def __str__(self) -> str:
        return f"{self.where}: {self.key}: {'warning: ' if self.warning else ''}{self.message}"


def check_environment(cfg: Config, *, port: bool = True) -> list[Finding]:
    found = [*_ledger(cfg), *_output(cfg)]
    if port and cfg.web.enabled:
        found += _port(cfg)
    return found


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL (None for other databases and `:memory:`)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    db = parsed.database
    if parsed.get_backend_name() != "sqlite" or not db or db == ":memory:":
        return None
    return Path(db)


def _finding(
    cfg: Config, section: str, key: str, message: str, *, warning: bool = False
) -> Finding:
    return Finding(
        where=cfg.where(section, key), key=f"{section}.{key}", message=message, warning=warning
    )


def _ledger(cfg: Config) -> list[Finding]:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    url = cfg.ledger.url
    try:
        parsed = make_url(url)
    except ArgumentError:
        return [_finding(cfg, "ledger", "url", f"{url!r} is not a database URL")]
    if parsed.get_backend_name() == "sqlite":
        if parsed.get_driver_name() != "aiosqlite":
            return [
                _finding(
                    cfg,
                    "ledger",
                    "url",
                    f"{parsed.drivername}:// is SQLite's synchronous driver; the daemon needs "
                    "sqlite+aiosqlite:/// (four slashes before an absolute path)",
                )
            ]
        path = sqlite_path(url)
        problem = _unwritable_file(path) if path is not None else None
        return [_finding(cfg, "ledger", "url", problem)] if problem else []
    problem = _driver_problem(url)
    return [_finding(cfg, "ledger", "url", problem)] if problem else []


def _driver_problem(url: str) -> str | None:
    """Build the ledger's engines as the daemon will (nothing connects): a missing module or a
    synchronous driver shows up here."""
    from sqlalchemy.exc import ArgumentError, InvalidRequestError, NoSuchModuleError
    from sqlalchemy.ext.asyncio import create_async_engine

    from orchestrator.ledger.store import ledger_url

    try:  # an engine, never a connection: checking must not create the ledger
        engine = create_async_engine(ledger_url(url))
    except ValueError as exc:  # a synchronous PostgreSQL driver
        return str(exc)
    except ImportError as exc:
        hint = (
            "" if "+" in url.split("://", 1)[0] else " and name the driver: postgresql+asyncpg://"
        )
        return f"the database driver is not installed ({exc}): {POSTGRES_EXTRA}{hint}"
    except NoSuchModuleError as exc:
        return f"unknown database driver: {exc}"
    except InvalidRequestError as exc:  # a synchronous driver for the async engine
        return f"{exc}; use postgresql+asyncpg:// ({POSTGRES_EXTRA})"
    except ArgumentError as exc:
        return str(exc)
    engine.sync_engine.dispose()
    return None


def _output(cfg: Config) -> list[Finding]:
    problem = _unwritable_dir(cfg.output.dir)
    return [_finding(cfg, "output", "dir", problem)] if problem else []


def _unwritable_dir(path: Path) -> str | None:
    """Why the daemon could not create files in `path` (made first if missing), or None."""
    if path.exists():
        if not path.is_dir():
            return f"{path} exists and is not a directory"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"{path} is not writable by uid {os.getuid()}"
        return None
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{path} cannot be created: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{path} cannot be created: {parent} is not writable by uid {os.getuid()}"
    return None


def _unwritable_file(path: Path) -> str | None:
    if path.exists():
        if path.is_dir():
            return f"{path} is a directory, not a database file"
        if not os.access(path, os.R_OK | os.W_OK):
            return f"{path} is not writable by uid {os.getuid()}"
    problem = _unwritable_dir(path.parent)
    return f"the ledger's directory: {problem}" if problem else None


def _port(cfg: Config) -> list[Finding]:
    host, port = cfg.web.host, cfg.web.port
    if port == 0:
        return []
    problem = port_problem(host, port)
    if problem is None:
        return []
    return [
        _finding(
            cfg,
            "web",
            "port",
            f"{problem} (fine if it is this daemon's own status server; `run` needs it free)",
            warning=True,
        )
    ]


def port_problem(host: str, port: int) -> str | None:
    """Why nothing could listen on host:port right now, or None."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return f"cannot resolve {host!r}: {exc.strerror or exc}"
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            why = "in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            return f"cannot listen on {host}:{port}: {why}"
    return None
