"""pyproject.toml lists its packages one by one (two are mapped from outside orchestrator/):
a new subpackage must be listed, or the wheel would ship without it."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_is_in_the_wheel() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "orchestrator").rglob("__init__.py")
    }
    mapped = setuptools["package-dir"]
    assert mapped == {"orchestrator.examples": "config", "orchestrator_migrations": "migrations"}
    assert all((ROOT / directory / "__init__.py").is_file() for directory in mapped.values())
    assert set(setuptools["packages"]) == found | set(mapped)
