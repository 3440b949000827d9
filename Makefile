# CompactNAS — two commands on a fresh machine:  make demo   /   make test
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# trials started by nnictl find the venv's python first
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup demo test test-slow bench gpu-check clean help

help:
	@echo "make demo   - set up .venv and run the ProxylessNAS scope study on embedded data under nnictl"
	@echo "make test   - set up .venv and run the fast test suite"
	@echo "make bench  - the ProxylessNAS memory/time benchmark (others: python -m bench.<name>; JSON + PNG in bench/out/)"
	@echo "make gpu-check - on a CUDA machine: GPU tests, the fast suite and the benchmarks on CUDA, logs in \$$OUT"

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip<27"
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

setup: $(STAMP)

demo: setup
	$(PY) -m experiments.demo

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

bench: setup
	$(PY) -m bench.proxyless_memory

gpu-check: setup
	$(PY) -m bench.gpu_check

clean:
	rm -rf runs bench/out .pytest_cache
