# The two commands a user needs are `make demo` and `make test`; both set everything up first.
SHELL := /bin/bash
PY := .venv/bin/python
STACK := deploy/stack

.PHONY: setup demo test lint unit stack-up stack-down

setup:
	deploy/setup-python
	deploy/setup-browser
	deploy/setup-promtool >/dev/null
	deploy/setup-kubeconform >/dev/null
	$(STACK) install

stack-up: setup
	$(STACK) up

stack-down:
	$(STACK) down

# The demo uses the CIFAKE zip beside the checkout when it is there (override: make demo DEMO_DATA=path),
# otherwise generated images; it says which.
DEMO_DATA ?= $(wildcard ../shared/datasets/cifake-train.zip)

demo: stack-up
	$(PY) -m ingest smoke
	$(PY) -m harness.demo $(if $(DEMO_DATA),--data $(DEMO_DATA))
	$(PY) -m harness.demo_console

# Lint first (seconds), then the whole suite against the real stack.
test: stack-up lint
	$(PY) -m pytest -q

unit: setup
	$(PY) -m pytest -q tests/unit

lint: setup
	$(PY) -m ruff check .
	$(PY) -m mypy
	.venv/bin/lint-imports
