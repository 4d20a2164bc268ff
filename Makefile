# Quick start: `make run` (install + API, worker, beat, Flower) and `make test`.
# `make bench BENCH_ARGS='--duration 30'`: the benchmark harness (bench/README.md).
# `make exec CMD='flask --app wsgi crm reminders'`: a command against the running `make run`.
# Another interpreter: `make test PYTHON=python3.13 VENV=.venv-3.13` (CI does, .ci/run).
# `make openapi-snapshot`: after a deliberate API change, rewrite tests/openapi_snapshot.json.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The exact versions to install (uv.lock exported with hashes; `make lock` writes both):
# dev.txt for development, the tests and CI, app.txt (its runtime subset) for the image.
LOCK_DEV := requirements/dev.txt
LOCK_APP := requirements/app.txt

.PHONY: install run exec test lint migrate bench openapi-snapshot lock audit

install: $(VENV)/.installed

# The locked set first (pip checks every hash), then the project itself without dependencies.
$(VENV)/.installed: pyproject.toml $(LOCK_DEV)
	$(PYTHON) -m venv --clear $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r $(LOCK_DEV)
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

run: install
	$(BIN)/python scripts/devstack.py

exec: install
	$(BIN)/python scripts/devstack.py exec $(CMD)

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

# uv.lock from pyproject.toml's ranges for every Python version requires-python names,
# keeping the pins that still fit (LOCK_ARGS=--upgrade: the newest that fit; or
# --upgrade-package NAME), and its exports with hashes. tests/test_lock.py fails when they
# no longer match pyproject.toml or each other.
lock: install
	$(BIN)/uv lock $(LOCK_ARGS)
	$(BIN)/uv export --frozen --quiet --no-emit-project --no-dev -o $(LOCK_APP)
	$(BIN)/uv export --frozen --quiet --no-emit-project --extra dev -o $(LOCK_DEV)

# Known vulnerabilities of the locked set (pip-audit, PyPI's advisory data: network needed).
# Fails on a fixed vulnerability in what the image ships; reports the rest (scripts/audit.py,
# docs/DEPENDENCIES.md). AUDIT_STRICT=1 also fails when packages could not be audited.
audit: install
	$(BIN)/python scripts/audit.py $(if $(AUDIT_STRICT),--strict)

openapi-snapshot: install
	$(BIN)/python -m scripts.openapi_snapshot
