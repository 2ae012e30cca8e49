# One source for every command the README and CI use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint demo bench clean chromium

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Headless Chromium for the browser tests comes from Debian (the tests drive it with Playwright).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q chromium fonts-dejavu-core; \
	  else sudo apt-get update -q && sudo apt-get install -y -q chromium fonts-dejavu-core; fi; }

test: install chromium
	$(VENV)/bin/ruff check tb_gradstats tests demo benchmarks
	$(PY) -m pytest -q tests

lint: install
	$(VENV)/bin/ruff check tb_gradstats tests demo benchmarks

demo: install
	$(PY) demo/run_demo.py $(DEMO_ARGS)

bench: install
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info runs bench-out test-artifacts
