# The README's two commands are `make demo` and `make test`; both set themselves up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.spe-installed

.PHONY: setup demo test bench lint format clean

$(STAMP): pyproject.toml scripts/setup.sh
	@PYTHON=$(PYTHON) VENV=$(VENV) ./scripts/setup.sh
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/spe demo

test: setup lint
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: setup
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) var test-artifacts .pytest_cache .ruff_cache
