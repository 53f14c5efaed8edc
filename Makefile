# One entry point per job. The virtual environment is built from requirements.txt (exact pins) on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(abspath $(VENV))/bin
# Stage commands in dvc.yaml call `python`: the venv's must come first on PATH.
export PATH := $(BIN):$(PATH)

.PHONY: venv lock repro lint test test-fast readme ui server bench bench-large profile clean-venv

venv: $(VENV)/.installed

# uv installs the lock, compiling every module on all cores, several times faster than pip; pip installs only uv itself,
# at the version the lock pins. uv is given pip's own find-links, so it takes the same local CPU wheel of torch.
# Compiled the modules must be: this machine sets PYTHONDONTWRITEBYTECODE, so nothing would compile them later.
FIND_LINKS = $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)
$(VENV)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$$(grep '^uv==' requirements.txt)"
	$(BIN)/uv pip install --quiet --python $(BIN)/python --compile-bytecode \
		$(foreach link,$(FIND_LINKS),--find-links $(link)) -r requirements.txt
	touch $@

# requirements.txt from pyproject.toml: pip-compile keeps the pins already in requirements.txt and pins only what
# is new; `make lock LOCK_ARGS='--upgrade-package NAME'` moves one package. The sed drops the local CPU wheel's
# +cpu label from torch's pin, so that the lock names the version whichever index serves the wheel.
PIP_COMPILE := pip-compile --quiet --extra=dev --strip-extras --no-emit-index-url --no-emit-find-links \
	--output-file=requirements.txt pyproject.toml
TORCH_PIN := s/^torch==\([0-9.]*\)+cpu$$/torch==\1/
lock: venv
	CUSTOM_COMPILE_COMMAND="make lock: $(PIP_COMPILE) && sed -i '$(TORCH_PIN)' requirements.txt" \
		$(PIP_COMPILE) $(LOCK_ARGS)
	sed -i '$(TORCH_PIN)' requirements.txt

repro: venv
	dvc repro

# The checks pre-commit runs too (.pre-commit-config.yaml); their settings are in pyproject.toml.
LINTED := segnet stages benchmarks tests
lint: venv
	ruff check $(LINTED)
	ruff format --check $(LINTED)
	mypy $(LINTED)

# One worker per core; a test file stays on one worker, since its module fixtures (a tiny project after
# `dvc repro`) are built once per worker that runs its tests. Files go out in the order tests/conftest.py
# gives them, the longest first, not in pytest-xdist's own order (by number of tests).
PYTEST := python -m pytest -rs -n auto --dist loadfile --no-loadscope-reorder --durations=15
test: lint
	$(PYTEST) tests

# The unit tests alone: the end-to-end ones are marked slow (tests/conftest.py).
test-fast: venv
	$(PYTEST) -m 'not slow' tests

UI_PORT ?= 5000
ui: venv
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port $(UI_PORT)

# The README's results table, rewritten from the committed metrics files (tests/test_docs.py checks it).
readme: venv
	python -m segnet.report

# The shared tracking server's settings live here, not in params.yaml, which drives the stages.
SERVER_DIR ?= .mlflow-server
SERVER_PORT ?= 5050
SERVER_POSTGRES_PORT ?= 5433
# An existing database (postgresql://user@host/db) instead of a PostgreSQL cluster in SERVER_DIR.
SERVER_DATABASE_URI ?=

server: venv
	python -m segnet.server --folder '$(SERVER_DIR)' --port $(SERVER_PORT) --postgres-port $(SERVER_POSTGRES_PORT) \
		$(if $(SERVER_DATABASE_URI),--database-uri '$(SERVER_DATABASE_URI)')

# The speed figures of docs/performance.md, as tables and JSON in benchmarks/results/. Time to accuracy, the whole
# pipeline from a fresh clone (about 10 minutes): python -m benchmarks.pipeline
bench: venv
	python -m benchmarks.throughput
	python -m benchmarks.techniques

# Where a training step's time goes: operators (torch.profiler), each convolution alone, and py-spy's samples.
profile: venv
	python -m benchmarks.profile
	python -m benchmarks.stacks

# Full-size data: a 100k-panel archive (500 panels per file), streamed prepare and memory-mapped training.
bench-large: venv
	python -m benchmarks.large

clean-venv:
	rm -rf $(VENV)
