# The two commands a newcomer needs: `make demo` and `make test`. Both set everything up themselves.
# Another interpreter in a venv of its own: make test PYTHON=python3.13 VENV=.venv-3.13
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-uvloop test-eager lint typecheck unit soak bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,fast]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/rh-agents demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck unit

# The suite on uvloop (the `fast` extra): every async test, and asyncio.run() in tests, run on
# uvloop's event loop (see tests/conftest.py).
test-uvloop: $(STAMP)
	RH_AGENTS_TEST_LOOP=uvloop $(BIN)/pytest -q

# The suite with asyncio.eager_task_factory (every task starts inside create_task), which
# needs Python 3.12+: make test-eager PYTHON=python3.13 VENV=.venv-3.13
test-eager: $(STAMP)
	RH_AGENTS_TEST_LOOP=eager $(BIN)/pytest -q

# The composition property test over 10,000 new random scenarios (make test runs 300), and the
# recovery property test over 1,000 new interrupted and resumed programs (make test runs 20;
# each is three runs with a real store, about 0.4 s).
soak: $(STAMP)
	RH_SOAK_EXAMPLES=10000 $(BIN)/pytest -q --timeout=3600 tests/test_composition_properties.py
	RH_SOAK_EXAMPLES=1000 $(BIN)/pytest -q --timeout=3600 tests/test_recovery_properties.py
	RH_SOAK_EXAMPLES=10000 $(BIN)/pytest -q --timeout=3600 tests/test_resilience_properties.py

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
