# One entry point for humans and CI. Every target installs what it needs first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint typecheck pytest demo simulate clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check orchestrator tests migrations
	$(BIN)/ruff format --check orchestrator tests migrations

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck pytest

demo: $(STAMP)
	$(BIN)/orchestrator demo --config config/demo.toml

simulate: $(STAMP)
	$(BIN)/orchestrator simulate --port 8765

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
