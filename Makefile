# Two commands do all set-up on a fresh machine:
#   make demo   environment + install + `mlflow run . -P epsilon=0.1` (Open-i, MiniLM, offline)
#   make test   environment with dev extras + the fast test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
# torch first, pinned: a bare range would let pip pick a multi-GB CUDA build
TORCH_SPEC ?= torch==2.13.0
EPSILON ?= 0.1
# the real data beside the project, when it is there (else Open-i is downloaded into the cache)
SHARED_DATA := $(abspath ../shared/data)
export RADPRIV_DATA_DIR ?= $(if $(wildcard $(SHARED_DATA)),$(SHARED_DATA),)
export MLFLOW_TRACKING_URI ?= sqlite:///mlflow.db
export TOKENIZERS_PARALLELISM ?= false
# no usage telemetry from machines that hold patient reports
export MLFLOW_DISABLE_TELEMETRY ?= true
export HF_HUB_DISABLE_TELEMETRY ?= 1

.PHONY: install demo test test-all perf ui clean

# requirements.lock: the exact versions the results were measured with, as pip constraints
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -c requirements.lock -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	PATH="$(BIN):$$PATH" mlflow run . -P epsilon=$(EPSILON) --env-manager local --experiment-name radpriv-openi

test: install
	$(BIN)/python -m pytest -q -m "not slow"

test-all: install
	$(BIN)/python -m pytest -q

# the performance suite (issue 7): ratios side by side, JSON + markdown in benchmarks/out/
perf: install
	$(BIN)/python benchmarks/perf.py --e2e

ui: install
	$(BIN)/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --host 127.0.0.1 --port 5000

clean:
	rm -rf mlflow.db mlartifacts checkpoints
