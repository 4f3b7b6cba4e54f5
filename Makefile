# The README's two commands are `make demo` and `make test`; both set themselves up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.spe-installed
# The peer ACRO's own virtualenv (it pins pandas < 3), for tests/unit/test_sdc_acro_agreement.py.
ACRO_STAMP := .venv-acro/.spe-acro-installed

.PHONY: setup demo test bench lint format clean

$(STAMP): pyproject.toml scripts/setup.sh
	@PYTHON=$(PYTHON) VENV=$(VENV) ./scripts/setup.sh
	@touch $(STAMP)

# Made by the full set-up above; on its own only when .venv-acro is missing or out of date.
$(ACRO_STAMP): scripts/setup.sh
	@PYTHON=$(PYTHON) ./scripts/setup.sh acro

# The workspace environment holds a copy of spe/: refreshed on every run (a no-op in 0.1 s when
# nothing changed).
setup: $(STAMP) $(ACRO_STAMP)
	@./scripts/workspace-env.sh .venv-workspace

demo: setup
	$(BIN)/spe demo

# The suite runs in TEST_WORKERS parallel processes, a file at a time each (tests/conftest.py
# keeps the files that start sandboxes in one worker); TEST_WORKERS=0 runs it in this process.
# A short base folder: each worker's test folders sit under popen-gwN/ in it, and the unix
# sockets SPE makes in a test's state folder must stay within 107 bytes.
TEST_WORKERS ?= 3
TEST_TMP ?= /tmp/spe-tests

test: setup lint
	$(BIN)/pytest -n $(TEST_WORKERS) --no-loadscope-reorder --basetemp=$(TEST_TMP)

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
	rm -rf $(VENV) .venv-acro .venv-workspace var test-artifacts .pytest_cache .ruff_cache

# Mutation testing of the permission and state-rule modules (mutation.cfg, in a scratch copy;
# a few minutes, so not part of `make test`). Fails on a surviving mutant that README.md does
# not list as equivalent.
.PHONY: mutation
mutation: setup
	@./scripts/mutation.sh
