# The two commands of the README:
#   make quickstart   set up .venv, run sweeps/quickstart.yaml (offline SmolLM2, local Ray, SQLite), show the leaderboard
#                     and the trade-off chart
#   make test         set up .venv, run the whole test suite (what CI runs), naming the 25 slowest tests
# and, for the inner loop while changing code:
#   make test-fast    every test not marked slow (no real SmolLM2, no Ray cluster)
PYTHON ?= python3
VENV ?= .venv
# A CPU build of torch for this machine class; override on GPU hosts, e.g. make TORCH='torch>=2.4' quickstart
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --quiet --disable-pip-version-check

.PHONY: install install-test quickstart test test-fast

# The core: what twossp needs to prune, evaluate, store and show (all the quickstart uses).
install: $(VENV)/.installed
# The core, then what the tests use too: pytest, hypothesis, psycopg, and llama.cpp's binding.
install-test: $(VENV)/.installed-test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) '$(TORCH)' 2>&1 | grep -v "^WARNING: Location" || true
	$(PIP) -e . 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import torch, transformers, ray, sqlalchemy, twossp"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
	@echo "installing llama-cpp-python (the first time pip builds llama.cpp from source: about 8 minutes)"
	$(PIP) -e '.[gguf]' 2>&1 | grep -v "^WARNING: Location" || true
	@$(BIN)/python -c "import llama_cpp" 2>/dev/null || echo "llama-cpp-python could not be built here:" \
		"the tests that run GGUF exports in llama.cpp are skipped"
	$(BIN)/python -c "import pytest, hypothesis, psycopg"
	touch $@

quickstart: install
	$(BIN)/twossp sweep run sweeps/quickstart.yaml
	$(BIN)/twossp leaderboard
	$(BIN)/twossp dash show tradeoff

test: install-test
	$(BIN)/pytest --durations=25

test-fast: install-test
	$(BIN)/pytest -m "not slow"
