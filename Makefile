# Two commands on a fresh machine:  make run  /  make test
# Both create the virtual environment (.venv) and install the project on first use.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck unit compiled test-compiled bench bench-smoke install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

install: $(STAMP)

## run: knd run on examples/services.yaml: two apps with scale-to-zero behind the activator
## on :8080 (curl -H 'Host: hello.localhost' localhost:8080/); Ctrl-C stops everything
run: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/knd run --file examples/services.yaml

## test: lint, type-check, the whole test suite, then the integration suite again against
## the mypyc-compiled build (what the Docker image ships), then the benchmark smoke; this is
## what CI runs. Every step runs even when an earlier one fails; the last two lines sum them
## all up (tools/test_summary.py, from each step's exit status and pytest's JUnit XML in
## build/test-report), the very last in pytest's form (`N passed, N skipped`), and make test
## exits non-zero when any step failed.
REPORT  := build/test-report
STEP    := $(BIN)/python tools/test_summary.py run $(REPORT)
SUBMAKE := $(MAKE) --no-print-directory
JUNIT   := 'PYTEST_ARGS=--junitxml={JUNIT}'
test: $(STAMP)
	@rm -rf $(REPORT)
	@$(STEP) ruff -- $(SUBMAKE) lint
	@$(STEP) mypy -- $(SUBMAKE) typecheck
	@$(STEP) suite --junit -- $(SUBMAKE) unit $(JUNIT)
	@$(STEP) 'compiled build' --junit -- $(SUBMAKE) test-compiled $(JUNIT)
	@$(STEP) 'benchmark smoke' --junit -- $(SUBMAKE) bench-smoke $(JUNIT)
	@$(BIN)/python tools/test_summary.py summary $(REPORT)

# Extra pytest options for the pytest steps (make test sets a JUnit XML report per step).
PYTEST_ARGS ?=

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## compiled: the mypyc build of the hot path, in build/compiled (the source tree stays pure)
compiled: $(STAMP)
	$(BIN)/python tools/build_compiled.py

# The compiled run repeats the integration tests of the compiled modules' behaviour (engine,
# queue-proxy, activator, h2c); platform, Kubernetes, autoscaler-loop and knd end-to-end tests
# exercise interpreted code and run once, in `unit`.
NOT_COMPILED := test_fakekube test_k8s_informer test_k8s_lease test_k8s_scale test_k8s_standalone \
	test_k8s_standalone_activator test_k8s_autoscaler test_kubernetes_knative test_knd \
	test_local_platform test_observability_aiohttp test_observability_knd test_scraper \
	test_statserver test_statsink test_knd_newcomer test_k8s_incluster test_k8s_manifests \
	test_httpget
# (-P and --import-mode=append: neither python -m nor pytest may put the source tree before
# build/compiled on sys.path, or the tests in this process would import the pure modules;
# test_h1scan.py checks that they do not)
test-compiled: compiled
	PYTHONPATH=$(CURDIR)/build/compiled $(BIN)/python -P -m pytest --import-mode=append -q \
		tests/integration tests/unit/test_h1scan.py \
		$(foreach t,$(NOT_COMPILED),--ignore=tests/integration/$(t).py) $(PYTEST_ARGS)

## bench: proxy throughput side by side with direct, nginx and an aiohttp proxy
bench: $(STAMP)
	$(BIN)/python -m benchmarks proxy

## bench-smoke: every benchmark scenario once, trimmed (python -m benchmarks all --smoke), as a
## pytest test; installs the bench extra (locust, matplotlib) first, only for this step
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,bench]' --config-settings editable_mode=compat
	touch $(BENCH_STAMP)

bench-smoke: $(BENCH_STAMP)
	KND_BENCH_SMOKE=1 $(BIN)/python -m pytest tests/bench_smoke -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
