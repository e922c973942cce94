# The README's commands. Each target creates .venv and installs the project into it if missing.
#   make repro      run the pipeline (dvc repro) on the configured data
#   make serve      the REST service over the champion on 127.0.0.1:3000 (python -m serving)
#   make test       the default test suite (fast: mechanics on tiny settings, no slow or GPU tests)
#   make test-all   ruff, the manual's strict build, then every test but the GPU ones (quality
#                   floors, dvc repro) with coverage: what CI runs
#   make test-bench every benchmark the manual documents, run at a small size (CI runs it too)
#   make docs       the manual (mkdocs build --strict into site/)
#   make test-gpu   the GPU tests (skip without CUDA)
#   make lint       ruff check + format check
#   make lock       re-resolve requirements.lock from pyproject.toml (pip-tools)
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
STAMP := $(VENV)/.installed
# The browser page's runtime: onnxruntime-web as serving/web/package-lock.json pins it.
WEB := serving/web/vendor/runtime.json

.PHONY: setup repro serve test test-all test-bench test-gpu lint lock docs

setup: $(STAMP) $(WEB)

$(WEB): serving/web/package.json serving/web/package-lock.json serving/web/vendor.mjs
	npm ci --prefix serving/web --ignore-scripts --no-audit --no-fund --loglevel=error
	node serving/web/vendor.mjs

# The exact versions in requirements.lock, then the project itself without re-resolving.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

# dvc repro with compute.kernels' environment (pipeline/contracts/kernels.py): the libraries read
# it as they load, so it is set before dvc starts the stages.
KERNELS := python -m pipeline.contracts.kernels --

repro: $(STAMP)
	$(KERNELS) dvc repro
	@# A fresh clone whose dvc.lock already matches every input skips evaluate (it has no outputs
	@# to rebuild) and so has no champion yet: then the gate runs alone and promotes one.
	test -e registry/champion || $(KERNELS) dvc repro --force --single-item evaluate

serve: $(STAMP) $(WEB)
	python -m serving --host 127.0.0.1 --port 3000

test: $(STAMP) $(WEB)
	pytest

test-all: $(STAMP) $(WEB)
	ruff check . && ruff format --check .
	NO_MKDOCS_2_WARNING=1 mkdocs build --strict --quiet
	pytest -m "not gpu and not bench" --durations=25 --cov --cov-report=term:skip-covered

test-bench: $(STAMP) $(WEB)
	pytest -m bench --durations=0

test-gpu: $(STAMP)
	pytest -m gpu

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 mkdocs build --strict

lint: $(STAMP)
	ruff check . && ruff format --check .

# torch's local version label (+cpu on a CPU-only machine) is dropped, so a GPU machine resolves
# the same release to its CUDA build.
lock: $(STAMP)
	$(BIN)/python -m pip install --quiet pip-tools
	pip-compile --quiet --extra dev --strip-extras --no-emit-find-links --no-emit-index-url \
		--no-header -o requirements.lock pyproject.toml
	sed -i -E 's/^(torch==[0-9.]+)\+[a-z0-9]+$$/\1/' requirements.lock
	sed -i '1i # The resolved dependency versions `make setup` installs (`make lock` writes this file).' \
		requirements.lock
