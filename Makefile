# jdiff developer commands. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.jdiff-test-installed

.PHONY: demo test lint format clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

DEMO_STAMP := $(VENV)/.jdiff-installed

$(DEMO_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	touch $(DEMO_STAMP)

# The embedded default model draws the README's first picture; prints the path it wrote.
demo: $(DEMO_STAMP)
	$(VENV)/bin/jdiff generate --prompt "a yellow circle on a blue background" --output outputs/demo.png

lint: $(STAMP)
	$(VENV)/bin/ruff check jdiff tests examples benchmarks
	$(VENV)/bin/ruff format --check jdiff tests examples benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff check --fix jdiff tests examples benchmarks
	$(VENV)/bin/ruff format jdiff tests examples benchmarks

test: lint
	$(PY) -m pytest -n 2 --dist loadfile -q --durations=40 tests

clean:
	rm -rf $(VENV) build *.egg-info outputs .pytest_cache
