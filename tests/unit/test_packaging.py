"""pyproject.toml lists its packages one by one (two are mapped from outside orchestrator/):
a new subpackage must be listed, or the wheel would ship without it."""

from __future__ import annotations

import shutil
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


def test_the_shipped_demo_unpacks_into_a_directory_of_its_own(tmp_path: Path) -> None:
    from orchestrator.config import load_config
    from orchestrator.demo import unpack_demo

    config = unpack_demo(tmp_path / "demo")
    assert config == tmp_path / "demo" / "demo.toml"
    assert not (tmp_path / "demo" / "__init__.py").exists()
    cfg = load_config(config)
    assert cfg.ledger.url == f"sqlite+aiosqlite:///{tmp_path}/demo/.demo/ledger.db"
    sources = [str(p.params["source"]) for p in cfg.pipelines if "source" in p.params]
    assert len(sources) == 3 and all(s.startswith(f"{tmp_path}/demo/demo-inbox/") for s in sources)
    assert all(list(Path(s).parent.glob(Path(s).name)) for s in sources)  # the inbox came too
    scratch = unpack_demo()  # no directory given: a new one, named by the caller
    try:
        assert scratch.parent.name.startswith("orchestrator-demo-") and scratch.is_file()
    finally:
        shutil.rmtree(scratch.parent)
