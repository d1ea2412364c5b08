# Two commands do all set-up on a fresh machine:
#   make demo   environment + install + `mlflow run . -P epsilon=0.1` (Open-i, MiniLM, offline)
#   make test   environment with dev extras + the fast test tier (make test-all: + integration)
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

.PHONY: install demo test test-integration test-all test-slow perf serve-check ui ui-check clean

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

# the fast tier: lint, unit tests and tiny-model end-to-end checks (≤ 3 min on 2 CPU cores)
test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not integration and not slow" --timeout=300 --durations=10

# the integration tier alone: DDP, resume, serve, PostgreSQL, sweeps, tune, audit
test-integration: install
	$(BIN)/python -m pytest -q -m "integration and not slow" --durations=25

# what CI runs: `make test`, then the integration tier
test-all: test test-integration

# the slow tier alone: long end-to-end checks and the benchmark suite's own test
test-slow: install
	$(BIN)/python -m pytest -q -m slow --durations=10

# the performance suite: ratios side by side, JSON + markdown in benchmarks/out/
perf: install
	$(BIN)/python benchmarks/perf.py --e2e

# radpriv serve under concurrent load (fp32 and bf16, 1 and 2 workers) and hostile input:
# JSON + markdown in benchmarks/out/; e.g. make serve-check SERVE_CHECK_ARGS="--workers 1,2,4 --requests 500"
SERVE_CHECK_ARGS ?=
serve-check: install
	$(BIN)/python benchmarks/serve_load.py $(SERVE_CHECK_ARGS)

ui: install
	$(BIN)/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --host 127.0.0.1 --port 5000

# the MLflow UI in headless Chromium (apt-get install chromium): run name, guarantee, datasets, model card
ui-check: install
	$(BIN)/python benchmarks/ui_check.py

clean:
	rm -rf mlflow.db mlartifacts checkpoints
