# The two commands a user needs are `make demo` and `make test`; both set everything up first.
SHELL := /bin/bash
PY := .venv/bin/python
STACK := deploy/stack

.PHONY: setup demo test lint unit stack-up stack-down test-stack-up

setup:
	deploy/setup-python
	deploy/setup-browser
	deploy/setup-promtool >/dev/null
	deploy/setup-kubeconform >/dev/null
	$(STACK) install

stack-up: setup
	$(STACK) up

# The tests' own stack: another state dir and other ports, so `make test` never writes to the stack that
# `make demo` and the review console use (tests/integration/test_user_stack_untouched.py checks that).
TEST_STACK_DIR := $(CURDIR)/.stack-test
TEST_STACK := CIFAKE_STACK_DIR=$(TEST_STACK_DIR) CIFAKE_STACK_KAFKA_PORT=29092 \
	CIFAKE_STACK_KAFKA_CONTROLLER_PORT=29093 CIFAKE_STACK_MINIO_PORT=29000 \
	CIFAKE_STACK_MINIO_CONSOLE_PORT=29001 CIFAKE_STACK_PG_PORT=25432

test-stack-up: setup
	$(TEST_STACK) $(STACK) up

stack-down:
	$(STACK) down
	$(TEST_STACK) $(STACK) down

# The demo uses the CIFAKE zip beside the checkout when it is there (override: make demo DEMO_DATA=path),
# otherwise generated images; it says which.
DEMO_DATA ?= $(wildcard ../shared/datasets/cifake-train.zip)

demo: stack-up
	$(PY) -m ingest smoke
	$(PY) -m harness.demo $(if $(DEMO_DATA),--data $(DEMO_DATA))
	$(PY) -m harness.demo_console

# Lint first (seconds), then the whole suite against the test stack; the user's stack is up too, so the
# last tests can show that the suite left it exactly as it was.
test: stack-up test-stack-up lint
	CIFAKE_ENV_FILE=$(TEST_STACK_DIR)/env CIFAKE_STACK_DIR=$(TEST_STACK_DIR) $(PY) -m pytest -q

unit: setup
	$(PY) -m pytest -q tests/unit

lint: setup
	$(PY) -m ruff check .
	$(PY) -m mypy
	.venv/bin/lint-imports
