# Fresh machine: `make demo` (install, fetch the offline assets, run the demo grid), `make test`.
# GPU users: `make install TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"` or any torch spec.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.medpeft-installed

.PHONY: install assets demo test test-fast bench gpu-check clean-runs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

assets: $(STAMP)
	$(BIN)/medpeft fetch

demo: assets
	$(BIN)/medpeft run configs/quick.yaml --backend processes

test: assets
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest -q

test-fast: assets
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest -q -m "not slow"

# medpeft's training path against a plain pad-to-max Trainer pipeline: tokens/s, peak memory, ratios (minutes)
bench: assets
	$(BIN)/python -m medpeft.bench

# On a CUDA machine (offline, no weights: gpu/check.sh and gpu/kit.sh): every model kind and method on the GPU,
# then `python -m medpeft.bench --gpu`; exits non-zero if any step failed (about 8 minutes on one H200)
gpu-check:
	PY=$(if $(wildcard $(BIN)/python),$(BIN)/python,python3) bash gpu/check.sh

clean-runs:
	rm -rf runs
