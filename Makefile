# Two commands for a fresh machine: `make run` and `make test`.
# Both build .venv from nothing (pinned versions in requirements.lock), then run.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= configs/run.yaml

.PHONY: setup run test lint bench lock clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/dso run --config $(CONFIG)

# Lint (ruff) and the layer contracts (import-linter, pyproject.toml) first: a broken layer fails fast.
test: setup
	$(BIN)/ruff check dso tests bench
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check dso tests bench
	$(BIN)/lint-imports

bench: setup
	$(BIN)/python bench/generator.py
	$(BIN)/python bench/oracle.py

# Re-pin every transitive dependency after changing pyproject.toml.
lock:
	$(BIN)/pip freeze --exclude-editable | grep -v '^-e' > requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache
