# The two commands a user needs are `make demo` and `make test`; both set everything up first.
SHELL := /bin/bash
PY := .venv/bin/python
STACK := deploy/stack

.PHONY: setup demo test lint unit stack-up stack-down

setup:
	deploy/setup-python
	$(STACK) install

stack-up: setup
	$(STACK) up

stack-down:
	$(STACK) down

demo: stack-up
	$(PY) -m ingest smoke

# Lint first (seconds), then the whole suite against the real stack.
test: stack-up lint
	$(PY) -m pytest -q

unit: setup
	$(PY) -m pytest -q -m "not integration"

lint: setup
	$(PY) -m ruff check .
	$(PY) -m mypy
