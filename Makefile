# One entry point per job. The virtual environment is built from requirements.txt (exact pins) on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(abspath $(VENV))/bin
# Stage commands in dvc.yaml call `python`: the venv's must come first on PATH.
export PATH := $(BIN):$(PATH)

.PHONY: venv repro test ui bench clean-venv

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

repro: venv
	dvc repro

test: venv
	python -m pytest -rs tests

ui: venv
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

bench: venv
	python -m benchmarks.pipeline
	python -m benchmarks.throughput
	python -m benchmarks.techniques
	python -m benchmarks.profile

clean-venv:
	rm -rf $(VENV)
