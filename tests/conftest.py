"""Shared fixtures. ``tests/unit`` needs nothing running; ``tests/integration`` talks to the real stack that
`deploy/stack up` started (`make test` starts it) and fails with a message saying so when it is unreachable,
never skips."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("CIFAKE_ENV_FILE", str(ROOT / ".stack" / "env"))

from ingest.settings import StackSettings, load  # noqa: E402
from tests.kafka_helpers import create_topics, delete_topics, kafka_reachable  # noqa: E402
from tests.retrainer_helpers import isolated_schema  # noqa: E402


@pytest.fixture(scope="session")
def stack() -> StackSettings:
    settings = load(StackSettings)
    problem = kafka_reachable(settings)
    if problem:
        pytest.fail(
            f"the stack is not reachable ({problem}); start it with `deploy/stack up` "
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
def group() -> str:
    return f"test-group-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def iso(stack: StackSettings) -> Iterator[StackSettings]:
    """The stack with a fresh PostgreSQL schema of its own (every migration applied), dropped afterwards."""
    with isolated_schema(stack) as s:
        yield s


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/integration carries the ``integration`` marker (``-m "not integration"``)."""
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)
