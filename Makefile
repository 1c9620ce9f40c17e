# Every target sets the project up first, so any of them works as the first command typed.
#   make table-4.3            a results table (PROFILE=smoke without $MUSDB_ROOT, thesis with it)
#   make test                 the test suite (CPU, no network)
#   make separate IN=song.wav CKPT=runs/<hash>/checkpoints/best.ckpt OUT=separated
#   make separate IN=song.wav MODEL=model.onnx OUT=separated      (an exported model, streamed)
#   make export CKPT=runs/<hash>/checkpoints/best.ckpt FORMAT=onnx|torchscript [OUT=model.onnx]
#   make stats EXP=experiments/mmdensenet/baseline.yaml FRAMES=64
#   make bench                data-loading and latency benchmarks -> results/bench/
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PROFILE ?=
RUNS ?= runs
FORMAT ?= onnx
FRAMES ?= 64
EXP ?= experiments/mmdensenet/baseline.yaml
PYTEST_ARGS ?=

.PHONY: setup test test-fast lint separate export stats bench list-tables clean-runs

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

table-%: setup
	$(PY) -m sweeps table $* $(if $(PROFILE),--profile $(PROFILE)) --runs-dir $(RUNS)

render-%: setup
	$(PY) -m sweeps render $* $(if $(PROFILE),--profile $(PROFILE)) --runs-dir $(RUNS)

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
	@test -n "$(IN)" -a -n "$(CKPT)$(MODEL)" || { echo "usage: make separate IN=<audio file> CKPT=<checkpoint> | MODEL=<model.onnx|model.pt> [OUT=<dir>]"; exit 2; }
	$(PY) -m lightning_modules.separate --input "$(IN)" $(if $(MODEL),--model "$(MODEL)",--checkpoint "$(CKPT)") --out "$(or $(OUT),separated)"

export: setup
	@test -n "$(CKPT)" || { echo "usage: make export CKPT=<checkpoint> [FORMAT=onnx|torchscript] [OUT=<file>]"; exit 2; }
	$(PY) -m lightning_modules.export --checkpoint "$(CKPT)" --format "$(FORMAT)" $(if $(OUT),--out "$(OUT)")

stats: setup
	@$(PY) -m lightning_modules.stats --config "$(EXP)" --frames $(FRAMES)

bench: setup
	$(PY) -m datamodules.benchmark --out results/bench
	$(PY) -m lightning_modules.latency --out results/bench
