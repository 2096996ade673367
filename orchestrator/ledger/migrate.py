"""Apply Alembic migrations from inside the daemon or the CLI.

Alembic (and Mako under it) costs ~10 MiB of resident memory for the life of the process, so it
is imported only when the database is not already at the newest revision; that check reads the
revision files' headers and `alembic_version` directly.
"""

from __future__ import annotations

import re
from importlib import import_module
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, inspect, text

from orchestrator.ledger.store import Ledger

# `migrations/` of the repository, installed as the package `orchestrator_migrations` (editable
# installs map it to the checkout): found the same way from a wheel, a container or a checkout.
MIGRATIONS: Path = import_module("orchestrator_migrations").DIRECTORY
_REV = re.compile(r"^revision(?::\s*str)?\s*=\s*['\"]([^'\"]+)['\"]", re.MULTILINE)
_DOWN = re.compile(r"^down_revision(?::[^=]+)?=\s*['\"]([^'\"]+)['\"]", re.MULTILINE)


def head_revision() -> str:
    """The newest revision: the one no other revision names as its parent."""
    revisions, parents = set(), set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        source = path.read_text(encoding="utf-8")
        if m := _REV.search(source):
            revisions.add(m.group(1))
        if m := _DOWN.search(source):
            parents.add(m.group(1))
    heads = revisions - parents
    if len(heads) != 1:
        raise RuntimeError(f"migrations must have exactly one head, found {sorted(heads)}")
    return heads.pop()


def alembic_config() -> Any:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def _current(conn: Connection) -> str | None:
    # Look before selecting: on PostgreSQL a failed SELECT aborts the transaction the migration
    # then runs in (InFailedSqlTransaction).
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def _upgrade(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        # One upgrade at a time, as BEGIN IMMEDIATE makes it on SQLite: a process started
        # alongside waits here, then finds the schema current (the key is arbitrary, fixed).
        conn.execute(text("SELECT pg_advisory_xact_lock(7301184016)"))
    if _current(conn) == head_revision():
        return
    from alembic import command

    cfg = alembic_config()
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")


async def upgrade(ledger: Ledger) -> None:
    await ledger.run_write(_upgrade)


async def is_current(ledger: Ledger) -> bool:
    async with ledger.read_engine.connect() as conn:
        return await conn.run_sync(_current) == head_revision()
