# Taishi — two commands on a fresh machine:
#   make demo   install the embedded mode, run the demo campaign, serve the console
#   make test   install everything the tests need, run them all
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO_STAMP := $(VENV)/.stamp-demo
TEST_STAMP := $(VENV)/.stamp-test

.PHONY: demo test bench install clean lint system-deps

# Real exporters, packet tools, PDF rendering and a CJK font the tests use (Debian packages).
SYSTEM_PKGS := tshark softflowd nfdump pmacct tcpreplay nmap iproute2 bsdutils poppler-utils fonts-wqy-microhei \
               libpango-1.0-0 libpangoft2-1.0-0 chromium \
               maven openjdk-17-jre-headless

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The embedded install only: no Kafka, Spark or search clients.
$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

# The cluster extra too: the integration tests (tests/integration) drive a real Kafka broker and search
# node, which their fixtures fetch once from Maven Central into .cache/services, start, and stop again.
$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,anomaly,cluster]'
	touch $@ $(DEMO_STAMP)

install: $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/taishi --data-dir taishi-data demo

system-deps:
	@missing=""; for p in $(SYSTEM_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

test: $(TEST_STAMP) system-deps
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(TEST_STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf taishi-data .pytest_cache
