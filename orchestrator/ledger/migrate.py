"""Apply Alembic migrations from inside the daemon or the CLI."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from orchestrator.ledger.store import Ledger

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def _upgrade(conn: Connection, cfg: AlembicConfig) -> None:
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")


def _current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


async def upgrade(ledger: Ledger) -> None:
    cfg = alembic_config()
    await ledger.run_write(lambda conn: _upgrade(conn, cfg))


async def is_current(ledger: Ledger) -> bool:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    async with ledger.read_engine.connect() as conn:
        return await conn.run_sync(_current) == head
