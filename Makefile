# The two quick-start commands are `make demo` and `make test`; everything
# else here is what they are built from.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint typecheck pytest sysdeps bench microbench clean

setup: $(STAMP)

# One environment for the demo, the tests and the benchmark: every backend,
# the dev tools, and the bench extra (the peers the benchmark measures, whose
# harness the tests drive too).
# meinheld 1.0.2 pins greenlet<0.5, which does not build on Python 3.11+;
# juggler[meinheld] brings a modern greenlet and meinheld itself is then
# installed without its stale pin (see the README, "meinheld").
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[all,dev,bench]'
	$(BIN)/pip install --quiet --no-deps 'meinheld==1.0.2'
	touch $@

# The supervisor serving the demo app with four workers on 127.0.0.1:8000.
demo: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/juggler examples/demo.ini

# System packages the tests drive for real: nginx, wrk, redis-server.
sysdeps:
	@bash .ci/sysdeps

test: setup sysdeps lint typecheck pytest

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

# mypy cannot follow setuptools' editable-install import hook, so it checks
# a tree of links that has the installed package shape: juggler/runner, ...
# bench/ imports juggler's control client, found in that tree too.
typecheck: setup
	@rm -rf .typecheck && mkdir -p .typecheck/juggler
	@for pkg in runner backends supervisor; do ln -s ../../$$pkg .typecheck/juggler/$$pkg; done
	cd .typecheck && ../$(BIN)/mypy --config-file ../pyproject.toml -p juggler
	MYPYPATH=.typecheck $(BIN)/mypy --config-file pyproject.toml bench

pytest: setup
	$(BIN)/pytest

# The quick profile includes one brief pass of the micro-benchmarks;
# `make microbench` runs them alone, timed at pytest-benchmark's defaults,
# with its own table.
bench: setup sysdeps
	$(BIN)/python -m bench --quick

microbench: setup
	$(BIN)/pytest -p no:cacheprovider bench/micro

clean:
	rm -rf $(VENV) .typecheck .pytest_cache .mypy_cache .ruff_cache
