"""Outputs the broker will never accept, against the real broker: a dead letter with the reason, and the
partition moves on (issue 15). The output topic is created with ``max.message.bytes`` = 2,000."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from harness.topics import create_topics
from ingest.contracts import DeadLetter, decode
from ingest.delivery import Delivery, TopicLimits, broker_limits
from ingest.kafka import make_admin, make_consumer, make_producer
from ingest.loop import Batch, ConsumerLoop, LoopConfig
from ingest.settings import StackSettings
from tests.kafka_helpers import committed, delete_topics, end_offsets, produce, read_all

pytestmark = pytest.mark.integration

LIMIT = 2000


@pytest.fixture
def small_topic(stack: StackSettings) -> Iterator[str]:
    """An output topic that accepts messages of at most ``LIMIT`` bytes."""
    name = f"test.small-out.{uuid.uuid4().hex[:8]}"
    create_topics(stack.kafka, {name: 1}, configs={"max.message.bytes": str(LIMIT)})
    yield name
    delete_topics(stack, [name])


def _loop(stack: StackSettings, topic: str, group: str, out: str, limits: TopicLimits) -> ConsumerLoop:
    """Each record's value says how large its output is: b"big" -> 5,000 bytes, anything else -> 100.
    Random bytes: the producers compress (lz4), and the broker limits the compressed batch."""

    def handle(batch: Batch) -> None:
        for r in batch.records:
            size = 5000 if r.value == b"big" else 100
            batch.produce(out, r.key, os.urandom(size), source=r)

    config = LoopConfig(
        service="test", max_batch=16, max_wait_ms=50, poll_timeout_ms=200, backoff_initial_s=0.05
    )
    delivery = Delivery(make_producer(stack.kafka), "test", limits, renew=lambda: make_producer(stack.kafka))
    consumer = make_consumer(stack.kafka, group, [topic], max_poll_records=16)
    return ConsumerLoop(consumer, delivery.producer, handle, config, delivery=delivery)


def _check(stack: StackSettings, topic: str, group: str, out: str) -> None:
    letters = [decode(DeadLetter, v) for *_, v in read_all(stack, topic + ".dlq", expect=1)]
    assert [(dl.code, dl.key_b64) for dl in letters] == [("output_too_large", "azM=")]  # b"k3"
    assert f"the topic accepts at most {LIMIT}" in letters[0].reason and out in letters[0].reason
    assert letters[0].payload() == b"big"
    # At least once: a retried batch may send a small output twice (consumers upsert by key).
    delivered = read_all(stack, out, expect=100, timeout=5)
    assert {k for _, _, k, _ in delivered} == {f"k{i}".encode() for i in range(8) if i != 3}
    assert committed(stack, group, topic) == end_offsets(stack, topic)  # the partition moved on


def test_an_output_over_the_topics_limit_dead_letters_its_record_only(
    stack: StackSettings, topic: str, group: str, small_topic: str
) -> None:
    produce(stack, topic, [(f"k{i}".encode(), b"big" if i == 3 else b"small") for i in range(8)])
    limits = TopicLimits(broker_limits(lambda: make_admin(stack.kafka)))
    stats = _loop(stack, topic, group, small_topic, limits).run(max_records=8, idle_timeout=60)
    assert (stats.processed, stats.dead_lettered) == (7, 1)
    _check(stack, topic, group, small_topic)


def test_a_limit_lowered_behind_the_services_back_is_read_again(
    stack: StackSettings, topic: str, group: str, small_topic: str
) -> None:
    """The cached limit is stale (1 MB): the broker itself rejects the message, which makes kafka-python's
    idempotent producer unusable. The loop replaces the producer, reads the limit again, and the retry
    dead-letters the record: nothing lost, nothing stalled."""
    produce(stack, topic, [(f"k{i}".encode(), b"big" if i == 3 else b"small") for i in range(8)])
    real = broker_limits(lambda: make_admin(stack.kafka))
    answers = [{small_topic: 1_048_588}]  # the first read is stale; later ones ask the broker

    def lookup(topics: list[str]) -> dict[str, int]:
        return answers.pop() if answers and small_topic in topics else real(topics)

    stats = _loop(stack, topic, group, small_topic, TopicLimits(lookup)).run(max_records=8, idle_timeout=60)
    assert stats.dead_lettered == 1 and stats.retries >= 1
    _check(stack, topic, group, small_topic)
