# peftds: `make run` trains the embedded default, `make test` runs the test suite (both offline).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Real data for offline runs: PEFTDS_DATA if set, else ../shared/data when it exists.
PEFTDS_DATA ?= $(wildcard $(abspath ..)/shared/data)
export PEFTDS_DATA
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
PYTEST_ARGS ?=

.PHONY: install run test test-fast test-slurm lint format inspect-demo bench-demo

# torch is pinned (torch==2.13.0) in pyproject.toml, so it installs in this same step.
$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed

run: install ## the embedded default: LoRA on pretrained MiniLM-L6, 2000 SST-2 sentences, offline
	$(BIN)/peftds train

test: install ## the whole suite (CI runs exactly this)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: install ## ruff lint + format check (CI runs it before the tests)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test-fast: install ## skip the slow real-model/real-data tests
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

# The cluster tests (tests/cluster) on a one-node SLURM cluster brought up and taken down around them; installs
# the Debian packages when missing (root). A cluster that cannot come up fails here in one line.
SLURM_DIR ?= $(or $(TMPDIR),/tmp)/peftds-slurm
test-slurm: install ## search and compare through hydra/launcher=submitit_slurm on a local SLURM cluster
	@start=$$(date +%s); scripts/slurm_local.sh install && PEFTDS_SLURM_DIR=$(SLURM_DIR) scripts/slurm_local.sh up >/dev/null \
	  || exit 1; \
	PEFTDS_SLURM=1 SLURM_CONF=$(SLURM_DIR)/etc/slurm.conf $(BIN)/python -m pytest -q tests/cluster $(PYTEST_ARGS); \
	rc=$$?; PEFTDS_SLURM_DIR=$(SLURM_DIR) scripts/slurm_local.sh down; \
	echo "test-slurm: $$(( $$(date +%s) - start )) s (cluster up, tests, cluster down)"; exit $$rc

inspect-demo: install
	$(BIN)/peftds inspect model=tiny_t5 design=spindle_t5base

bench-demo: install ## CPU step timings of a design vs peft LoRA, the frozen floor, full FT, forward only
	$(BIN)/peftds bench model=tiny_t5 design=spindle_t5base
	$(BIN)/peftds bench model=minilm_l6 design=lora

# search-demo, search-tiny and the paper reproduction recipes
include search.mk
# table-cpu and the paper tables (peftds compare)
include compare.mk
