# Taishi — two commands on a fresh machine:
#   make demo   install the embedded mode, run the demo campaign, serve the console
#   make test   install everything the tests need, run them all
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO_STAMP := $(VENV)/.stamp-demo
TEST_STAMP := $(VENV)/.stamp-test

.PHONY: demo test bench install clean lint system-deps

# Real exporters and packet tools the collector tests drive (Debian packages).
SYSTEM_TOOLS := tshark softflowd nfdump tcpreplay logger
SYSTEM_PKGS  := tshark softflowd nfdump tcpreplay bsdutils

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The embedded install only: no Kafka, Spark or search clients.
$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,anomaly]'
	touch $@ $(DEMO_STAMP)

install: $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/taishi --data-dir taishi-data demo

system-deps:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system tools:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(SYSTEM_PKGS) >/dev/null; \
	fi

test: $(TEST_STAMP) system-deps
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(TEST_STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf taishi-data .pytest_cache
