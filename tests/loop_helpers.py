"""In-memory clients and a loop configuration for the consumer loop's unit tests."""

from __future__ import annotations

from kafka import TopicPartition

from ingest.loop import LoopConfig
from tests.fakes import FakeConsumer

TOPIC = "t"


def make(values_per_partition: list[list[bytes]]) -> FakeConsumer:
    """A consumer of ``TOPIC`` whose partition ``p`` holds ``values_per_partition[p]`` (key ``b"k"``)."""
    return FakeConsumer(
        {TopicPartition(TOPIC, p): [(b"k", v) for v in vals] for p, vals in enumerate(values_per_partition)}
    )


def config(**kw: object) -> LoopConfig:
    """A fast loop: small batches, no batch window, millisecond backoff."""
    base: dict[str, object] = {
        "service": "test",
        "max_batch": 4,
        "max_wait_ms": 0,
        "backoff_initial_s": 0.001,
    }
    base.update(kw)
    return LoopConfig(**base)  # type: ignore[arg-type]
