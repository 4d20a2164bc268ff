# Quick start: `make run` (install + API, worker, beat, Flower) and `make test`.
# `make bench BENCH_ARGS='--duration 30'`: the benchmark harness (bench/README.md).
# `make openapi-snapshot`: after a deliberate API change, rewrite tests/openapi_snapshot.json.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test lint migrate bench openapi-snapshot

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: install
	$(BIN)/python scripts/devstack.py

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

migrate: install
	$(BIN)/alembic upgrade head

bench: install
	$(BIN)/python bench/run.py $(BENCH_ARGS)

openapi-snapshot: install
	$(BIN)/python -m scripts.openapi_snapshot
