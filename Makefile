# Taishi — two commands on a fresh machine:
#   make demo   install the embedded mode, run the demo campaign, serve the console
#   make test   install everything the tests need, run them all
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO_STAMP := $(VENV)/.stamp-demo
TEST_STAMP := $(VENV)/.stamp-test

.PHONY: demo test bench install clean lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The embedded install only: no Kafka, Spark or search clients.
$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(DEMO_STAMP)

install: $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/taishi --data-dir taishi-data demo

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(TEST_STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf taishi-data .pytest_cache
