# `make demo` and `make test` create .venv (Python 3.12) when it is missing or pyproject.toml changed.
PY ?= $(shell command -v python3.12 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed
BIN := $(VENV)/bin

.PHONY: demo test bench tutorials lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pyro-reparam demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadgroup tests

bench: $(STAMP)
	$(BIN)/python -m benchmarks --out benchmarks/results

tutorials: $(STAMP)
	$(BIN)/python -m tutorials.run --full

lint: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) runs .pytest_cache
