# Everything a newcomer needs: `make dev` runs the main job, `make check` passes the tests.
# The virtualenv is built with uv from uv.lock; uv itself is bootstrapped from PyPI if missing.
SHELL := /bin/bash
export UV_PYTHON_DOWNLOADS := never

# Prefer Python 3.12, accept 3.11; pyenv installs count even when they are not the active version.
PYENV_DIR := $(or $(PYENV_ROOT),$(HOME)/.pyenv)
PYTHON ?= $(shell for c in python3.12 $$(ls -d $(PYENV_DIR)/versions/3.12*/bin/python3.12 2>/dev/null | sort -V | tail -1) \
	python3.11 $$(ls -d $(PYENV_DIR)/versions/3.11*/bin/python3.11 2>/dev/null | sort -V | tail -1) python3; do \
	"$$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { command -v "$$c"; break; }; done)
UV ?= $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install tools fmt lint typecheck test check bench fuzz soak run dev schemas monitoring clean

install: $(VENV)/.installed

.tools/bin/uv:
	python3 -m venv .tools
	.tools/bin/pip install --quiet uv==0.13.9

$(VENV)/.installed: pyproject.toml uv.lock | $(if $(findstring .tools,$(UV)),.tools/bin/uv)
	@test -n "$(PYTHON)" || { echo "Python 3.11 or newer is required"; exit 1; }
	$(UV) sync --locked --extra devstack --python "$(PYTHON)"
	@touch $@

# Debian's prometheus package, unpacked into .tools/ (not installed: no service, no root-owned
# files): promtool tests the alert rules, and a real Prometheus scrapes a real worker for the
# dashboard's test. apt-get refreshes its package lists only when the download finds none.
PROMETHEUS_BIN := .tools/prometheus/usr/bin
tools: $(PROMETHEUS_BIN)/promtool

$(PROMETHEUS_BIN)/promtool:
	rm -rf .tools/deb && mkdir -p .tools/deb
	cd .tools/deb && { apt-get download prometheus || { apt-get update -qq && apt-get download prometheus; }; }
	dpkg-deb -x .tools/deb/prometheus_*.deb .tools/prometheus
	rm -rf .tools/deb
	$@ --version | head -1

fmt: install
	$(BIN)/ruff format worker tests
	$(BIN)/ruff check --fix worker tests

lint: install
	$(BIN)/ruff format --check worker tests
	$(BIN)/ruff check worker tests
	$(BIN)/mypy
	$(BIN)/gpm schemas --check

typecheck: install
	$(BIN)/mypy

# The Neo4j cases run on a real Neo4j: NEO4J_URI if set, else the shared test server beside
# the repository (../shared/servers/neo4j-5.26), started and stopped around the suite.
test: install tools
	tests/with-neo4j $(BIN)/pytest

# Lint, types, schema drift and the whole test suite: what CI runs.
check: lint test

# e.g. make bench BENCH_ARGS="--backend falkordb --files 300"
bench: install
	$(BIN)/python -m tests.bench.ingest $(BENCH_ARGS)

# The hostile-input and contract-agreement property tests, with many more examples than CI runs.
FUZZ_EXAMPLES ?= 2000
fuzz: install
	GPM_TEST_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) tests/with-neo4j $(BIN)/pytest --timeout 3600 \
		tests/unit/test_contract_agreement.py tests/unit/test_known_digest.py tests/unit/test_record_batches.py \
		tests/integration/test_hostile_input.py tests/integration/test_hostile_records.py

# An hour of traffic on the embedded stack, replicas restarted and killed (not in CI):
# the stores must equal a clean run's and the worker's memory stay flat. make soak SOAK_MINUTES=10
SOAK_MINUTES ?= 60
soak: install
	$(BIN)/python -m tests.soak --minutes $(SOAK_MINUTES)

run: install
	$(BIN)/gpm run

dev: install
	$(BIN)/gpm dev

schemas: install
	$(BIN)/gpm schemas

# deploy/monitoring/prometheusrule.yaml from alerts.yml, after editing the rules.
monitoring: install
	$(BIN)/python -m tests.monitoring

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache
