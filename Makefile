# Every target sets the project up first, so any of them works as the first command typed.
#   make table-4.3            a results table (PROFILE=smoke without $MUSDB_ROOT, full with it)
#   make table-4.3 LOGGER=wandb   the same, plus one offline W&B run per row (see the README)
#   make test                 the test suite (CPU, no network)
#   make separate IN=song.wav CKPT=runs/<hash>/checkpoints/best.ckpt OUT=separated
#   make separate IN=song.wav MODEL=model.onnx [RUNTIME=openvino] OUT=separated   (an exported model, streamed)
#   make export CKPT=runs/<hash>/checkpoints/best.ckpt FORMAT=onnx|torchscript [OUT=model.onnx]
#   make stats EXP=experiments/mmdensenet/baseline.yaml FRAMES=64
#   make bench                data-loading and latency benchmarks -> results/bench/
#   make sweep-4.3 EXECUTOR=local|slurm WORKERS=4 STORAGE=postgresql://...   a table by n workers
#   make hpo-random-search EXECUTOR=slurm WORKERS=8                            a search space
#   make dashboard STORAGE=...                                                 optuna-dashboard
#   make plan-4.7 [PROFILE=full RUNS=... STORAGE=...]   each row's run, status, size; runs nothing
#   make plan-4.7 CONFIG="<row label>"                  that row's resolved config (per stage)
#   make status [PROFILE=... RUNS=... STORAGE=...]      every table's rows by status
#   make table-4.13 SEEDS=3   three runs per row (own seeds): intervals and paired tests over them
#   make results [RUNS=...]   results/README.md: every table, its status and claims (trains nothing)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PROFILE ?=
LOGGER ?=
RUNS ?= runs
FORMAT ?= onnx
FRAMES ?= 64
EXP ?= experiments/mmdensenet/baseline.yaml
PYTEST_ARGS ?=
EXECUTOR ?= local
WORKERS ?= 1
STORAGE ?=
SLURM_CONFIG ?=
SLURM ?=
PORT ?= 8080
CONFIG ?=
SEEDS ?=
SEEDS_ARG = $(if $(SEEDS),--seeds $(SEEDS))
# What sweep-%/hpo-% pass on: storage, SLURM settings (SLURM="slurm_partition=gpu gpus_per_node=1").
SWEEP_ARGS = $(if $(PROFILE),--profile $(PROFILE)) --runs-dir $(RUNS) \
	--executor $(EXECUTOR) --workers $(WORKERS) $(if $(STORAGE),--storage $(STORAGE)) \
	$(if $(SLURM_CONFIG),--slurm-config $(SLURM_CONFIG)) $(foreach s,$(SLURM),--slurm $(s))

.PHONY: setup test test-fast lint separate export stats bench list-tables clean-runs dashboard status results

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

table-%: setup
	$(PY) -m sweeps table $* $(if $(PROFILE),--profile $(PROFILE)) --runs-dir $(RUNS) $(if $(STORAGE),--storage $(STORAGE)) $(if $(LOGGER),--logger $(LOGGER)) $(SEEDS_ARG)

sweep-%: setup
	$(PY) -m sweeps sweep $* $(SWEEP_ARGS) $(if $(LOGGER),--logger $(LOGGER)) $(SEEDS_ARG)

hpo-%: setup
	$(PY) -m sweeps hpo $* $(SWEEP_ARGS)

dashboard: setup
	$(PY) -m sweeps dashboard --runs-dir $(RUNS) --port $(PORT) $(if $(STORAGE),--storage $(STORAGE))

render-%: setup
	$(PY) -m sweeps render $* $(if $(PROFILE),--profile $(PROFILE)) --runs-dir $(RUNS) $(SEEDS_ARG)

# @: the output alone, so that `make plan-<id> CONFIG=... > row.yaml` is the config
plan-%: setup
	@$(PY) -m sweeps plan $* $(if $(PROFILE),--profile $(PROFILE)) --runs-dir $(RUNS) $(if $(STORAGE),--storage $(STORAGE)) $(if $(CONFIG),--config "$(CONFIG)") $(SEEDS_ARG)

status: setup
	@$(PY) -m sweeps status $(if $(PROFILE),--profile $(PROFILE)) --runs-dir $(RUNS) $(if $(STORAGE),--storage $(STORAGE)) $(SEEDS_ARG)

results: setup
	$(PY) -m sweeps results --runs-dir $(RUNS)

list-tables: setup
	$(PY) -m sweeps list

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

separate: setup
	@test -n "$(IN)" -a -n "$(CKPT)$(MODEL)" || { echo "usage: make separate IN=<audio file> CKPT=<checkpoint> | MODEL=<model.onnx|model.pt> [RUNTIME=onnxruntime|openvino|torchscript] [OUT=<dir>]"; exit 2; }
	$(PY) -m lightning_modules.inference.separate --input "$(IN)" $(if $(MODEL),--model "$(MODEL)",--checkpoint "$(CKPT)") $(if $(RUNTIME),--runtime "$(RUNTIME)") --out "$(or $(OUT),separated)"

export: setup
	@test -n "$(CKPT)" || { echo "usage: make export CKPT=<checkpoint> [FORMAT=onnx|torchscript] [OUT=<file>]"; exit 2; }
	$(PY) -m lightning_modules.inference.export --checkpoint "$(CKPT)" --format "$(FORMAT)" $(if $(OUT),--out "$(OUT)")

stats: setup
	@$(PY) -m lightning_modules.inference.stats --config "$(EXP)" --frames $(FRAMES)

bench: setup
	$(PY) -m datamodules.benchmark --out results/bench
	$(PY) -m lightning_modules.inference.latency --out results/bench
	$(PY) -m lightning_modules.evaluation.benchmark --out results/bench
