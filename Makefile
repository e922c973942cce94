# The README's commands. Each target creates .venv and installs the project into it if missing.
#   make repro      run the pipeline (dvc repro) on the configured data
#   make test       the default test suite (fast: no slow or GPU tests)
#   make test-all   every test but the GPU ones, slow end-to-end runs included (what CI runs)
#   make lint       ruff check + format check
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
STAMP := $(VENV)/.installed

.PHONY: setup repro test test-all lint

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

repro: $(STAMP)
	dvc repro

test: $(STAMP)
	pytest

test-all: $(STAMP)
	ruff check . && ruff format --check .
	pytest -m "not gpu"

lint: $(STAMP)
	ruff check . && ruff format --check .
