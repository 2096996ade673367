"""The Alembic migrations, shipped in the wheel as the package `orchestrator_migrations` (see
pyproject.toml); the directory stays at the top of the repository."""

from pathlib import Path

DIRECTORY = Path(__file__).resolve().parent
ALEMBIC_INI = DIRECTORY / "alembic.ini"
