# Two commands on a fresh machine: `make run` (the main job) and `make test` (the suite).
# Both create .venv and install the project first. torch comes from TORCH_SPEC, pinned so
# that pip takes the local CPU build instead of downloading a multi-GB CUDA one.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.xattr-installed

.PHONY: setup run test lint format bench

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: setup
	$(PY) train_free_eval.py $(ARGS)

test: setup
	$(PY) -m ruff check src tests benchmarks docs train_free_eval.py
	$(PY) -m ruff format --check src tests benchmarks docs train_free_eval.py
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check src tests benchmarks docs train_free_eval.py

format: setup
	$(PY) -m ruff format src tests benchmarks docs train_free_eval.py
	$(PY) -m ruff check --fix src tests benchmarks docs train_free_eval.py

bench: setup
	for f in benchmarks/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done
