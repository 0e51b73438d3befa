# jdiff developer commands. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.jdiff-test-installed

.PHONY: test lint format clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check jdiff tests examples benchmarks
	$(VENV)/bin/ruff format --check jdiff tests examples benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff check --fix jdiff tests examples benchmarks
	$(VENV)/bin/ruff format jdiff tests examples benchmarks

test: lint
	$(PY) -m pytest -n 2 --dist loadfile -q tests

clean:
	rm -rf $(VENV) build *.egg-info outputs .pytest_cache
