"""Small helpers for integration tests: topics, producing, reading back, committed offsets, waiting."""

from __future__ import annotations

import time
from collections.abc import Iterable

from kafka import KafkaConsumer, TopicPartition

from harness import topics as harness_topics
from ingest.kafka import make_admin, make_consumer, make_producer
from ingest.loop import ConsumerLoop, Handler, LoopConfig
from ingest.metrics import LoopMetrics
from ingest.settings import StackSettings


def kafka_reachable(stack: StackSettings) -> str | None:
    try:
        admin = make_admin(stack.kafka)
        try:
            admin.list_topics()
        finally:
            admin.close()
    except Exception as e:
        return f"Kafka at {stack.kafka.bootstrap_servers}: {type(e).__name__}: {e}"
    return None


def create_topics(stack: StackSettings, partitions: dict[str, int]) -> None:
    """Create topics and wait until clients see every partition: a consumer group that joins before the
    metadata is there gets an empty first assignment and has to rebalance again, which makes tests slow
    and, on a loaded machine, flaky."""
    harness_topics.create_topics(stack.kafka, partitions)


def delete_topics(stack: StackSettings, names: list[str]) -> None:
    admin = make_admin(stack.kafka)
    try:
        admin.delete_topics(names)
    except Exception:  # cleanup is best effort; a leftover test topic harms nothing
        pass
    finally:
        admin.close()


def produce(stack: StackSettings, topic: str, items: Iterable[tuple[bytes | None, bytes | None]]) -> int:
    producer = make_producer(stack.kafka)
    n = 0
    try:
        for key, value in items:
            producer.send(topic, key=key, value=value)
            n += 1
        producer.flush(timeout=30)
    finally:
        producer.close()
    return n


def read_all(
    stack: StackSettings, topic: str, expect: int, timeout: float = 30
) -> list[tuple[int, int, bytes | None, bytes | None]]:
    """Read (partition, offset, key, value) from the beginning of every partition until ``expect`` records."""
    consumer = KafkaConsumer(**stack.kafka.client_kwargs(), enable_auto_commit=False)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[tuple[int, int, bytes | None, bytes | None]] = []
        deadline = time.monotonic() + timeout
        while len(out) < expect and time.monotonic() < deadline:
            for _tp, msgs in consumer.poll(timeout_ms=200).items():
                out.extend((m.partition, m.offset, m.key, m.value) for m in msgs)
        return out
    finally:
        consumer.close()


def committed(stack: StackSettings, group: str, topic: str) -> dict[int, int]:
    """The group's committed offsets for ``topic`` (partitions without a commit are left out)."""
    # A consumer that never subscribes does not join the group, so it cannot disturb it.
    consumer = KafkaConsumer(**stack.kafka.client_kwargs(), group_id=group, enable_auto_commit=False)
    try:
        out = {}
        for p in sorted(consumer.partitions_for_topic(topic) or set()):
            offset = consumer.committed(TopicPartition(topic, p))
            if offset is not None and offset >= 0:
                out[p] = offset
        return out
    finally:
        consumer.close(autocommit=False)


def end_offsets(stack: StackSettings, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(**stack.kafka.client_kwargs())
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or set())]
        return {tp.partition: off for tp, off in consumer.end_offsets(tps).items() if off > 0}
    finally:
        consumer.close()


def make_loop(
    stack: StackSettings,
    topic: str,
    group: str,
    handler: Handler,
    max_batch: int = 16,
    metrics: LoopMetrics | None = None,
    backoff_initial_s: float = 0.05,
) -> ConsumerLoop:
    consumer = make_consumer(stack.kafka, group, [topic], max_poll_records=max_batch)
    producer = make_producer(stack.kafka)
    config = LoopConfig(
        service="test",
        max_batch=max_batch,
        max_wait_ms=50,
        poll_timeout_ms=200,
        backoff_initial_s=backoff_initial_s,
    )
    return ConsumerLoop(consumer, producer, handler, config, metrics)
