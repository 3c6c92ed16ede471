"""Shared fixtures. ``tests/unit`` needs nothing running; ``tests/integration`` talks to the test stack (its
own Kafka, MinIO and PostgreSQL in ``.stack-test``, on other ports than the user's ``.stack``; `make test`
starts both) and fails with a message saying so when it is unreachable, never skips.

Tests marked ``after_suite`` run last: they check that the user's stack came out of the suite unchanged
(``tests/user_stack.py``), against a fingerprint taken before the first test."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TEST_STACK_DIR = ROOT / ".stack-test"
os.environ.setdefault("CIFAKE_ENV_FILE", str(TEST_STACK_DIR / "env"))

from playwright.sync_api import Browser, sync_playwright  # noqa: E402

from ingest.settings import StackSettings, load  # noqa: E402
from tests.kafka_helpers import create_topics, delete_topics, kafka_reachable  # noqa: E402
from tests.retrainer_helpers import isolated_schema  # noqa: E402
from tests.user_stack import BEFORE_SUITE, before_suite  # noqa: E402


@pytest.fixture(scope="session")
def stack() -> StackSettings:
    settings = load(StackSettings)
    problem = kafka_reachable(settings)
    if problem:
        pytest.fail(
            f"the test stack is not reachable ({problem}); start it with `make test-stack-up` "
            f"(`make test` does this) — env file: {os.environ['CIFAKE_ENV_FILE']}"
        )
    return settings


@pytest.fixture
def topic(stack: StackSettings, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh 3-partition topic (plus its .dlq) for one test, deleted afterwards."""
    base = re.sub(r"[^A-Za-z0-9._-]", "-", request.node.name)[:60]
    name = f"test.{base}.{uuid.uuid4().hex[:8]}"
    create_topics(stack, {name: 3, name + ".dlq": 1})
    yield name
    delete_topics(stack, [name, name + ".dlq"])


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Headless Debian Chromium (`make setup` installs it) driven by Playwright."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make setup` installs it (deploy/setup-browser)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def group() -> str:
    return f"test-group-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def iso(stack: StackSettings) -> Iterator[StackSettings]:
    """The stack with a fresh PostgreSQL schema of its own (every migration applied), dropped afterwards."""
    with isolated_schema(stack) as s:
        yield s


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/integration carries the ``integration`` marker (``-m "not integration"``);
    ``after_suite`` tests move to the end, and the user's stack is fingerprinted before anything runs."""
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)
    last = [i for i in items if i.get_closest_marker("after_suite")]
    if last:
        items[:] = [i for i in items if i not in last] + last
        config.stash[BEFORE_SUITE] = before_suite()
