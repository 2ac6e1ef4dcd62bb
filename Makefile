# The README's set-up, as targets. `make test` is what CI runs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-fast quickstart lint clean browser

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first and pinned: 2.13.0 is the CPU wheel on this machine's disk; letting pip
# resolve torch through another package would pull a multi-GB CUDA build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Debian's Chromium, for the test that opens the HTML report in a real browser (~1 min to
# install; skipped with a message where it cannot be installed).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get \
	  >/dev/null 2>&1 && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install \
	  -y -qq chromium >/dev/null; } || echo "chromium not installed: the browser test is skipped"

test: $(STAMP) browser
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -n 2 -q --durations=10

# The inner loop: everything but the tests marked slow (sweeps, Ray, subprocess kills,
# end-to-end training and CLI runs, the README's commands), property tests at a quarter of
# their examples. `make test` (and CI) runs everything in full.
test-fast: $(STAMP)
	SPIRALSEARCH_TEST_FAST=1 RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -n 2 -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check spiralsearch tests benchmarks

# The main job on the embedded defaults: a real sweep on this CPU (~5 min), then the
# scaling-law fit table and the offline HTML report.
quickstart: $(STAMP)
	$(BIN)/spiralsearch sweep search_spaces/quickstart.yaml
	$(BIN)/spiralsearch report --db results/quickstart.duckdb --out reports/quickstart.html
	$(BIN)/spiralsearch fit --db results/quickstart.duckdb

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
