# Two commands on a fresh machine:  make run  /  make test
# Both create the virtual environment (.venv) and install the project on first use.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck unit bench install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

install: $(STAMP)

## run: the sample app behind a real queue-proxy on :8012 (Ctrl-C stops it)
run: $(STAMP)
	$(BIN)/python -m examples.serve

## test: lint, type-check and the whole test suite (what CI runs)
test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest

## bench: proxy throughput side by side with direct, nginx and an aiohttp proxy
bench: $(STAMP)
	$(BIN)/python -m benchmarks proxy

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
