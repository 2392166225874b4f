# Two commands do all the set-up on a fresh machine (Python 3.11, git):
#   make repro   creates .venv, installs the pinned dependencies, runs `dvc repro`
#   make test    creates .venv, installs the pinned dependencies, runs the test suite
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
# No usage telemetry from MLflow, DVC or anything honouring DO_NOT_TRACK.
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup repro test test-unit bench clean-outputs

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

repro: setup
	dvc repro

test: setup
	$(BIN)/python -m pytest

test-unit: setup
	$(BIN)/python -m pytest tests/unit

bench: setup
	$(BIN)/python bench/train_throughput.py
