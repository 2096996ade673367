# One entry point for humans and CI. Every target installs what it needs first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint typecheck pytest freeze demo bench simulate image chromium promtool clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check orchestrator tests migrations bench
	$(BIN)/ruff format --check orchestrator tests migrations bench

typecheck: $(STAMP)
	$(BIN)/mypy

# The exact versions this run installed, in the log (a reviewer sees what was tested).
freeze: $(STAMP)
	@echo "--- pip freeze (what this run installed) ---"
	@$(BIN)/pip freeze --exclude-editable
	@echo "--- end of pip freeze ---"

pytest: $(STAMP) freeze promtool
	$(BIN)/pytest -q

test: lint typecheck pytest

BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# The benchmark suite: one table, bench/results/latest.json and bench/results/polling.png.
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.run

demo: $(STAMP)
	$(BIN)/orchestrator demo --config config/demo.toml

simulate: $(STAMP)
	$(BIN)/orchestrator simulate --port 8765

# Build deploy/Dockerfile and run the image through its checks (starts a Docker engine if none
# runs, builds the base image offline once); exit 77 when no engine can run here.
image: $(STAMP)
	PYTHON=$(BIN)/python deploy/test-image.sh

# Debian's Chromium for the status-page test (skipped where it is missing). Needs root.
chromium:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

# Debian's promtool for the alert-rule tests (deploy/prometheus): installed when missing and
# root. Elsewhere the message below says so, and those tests fail rather than skip.
promtool:
	@command -v promtool >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; } || \
		echo "promtool is missing and cannot be installed here (not root?): apt-get install prometheus; the alert-rule tests will fail"

clean:
	rm -rf $(VENV) config/.demo .pytest_cache .mypy_cache .ruff_cache
