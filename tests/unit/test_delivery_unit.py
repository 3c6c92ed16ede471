"""Delivery failures the broker will never fix by itself (ingest/delivery.py), against in-memory clients.
The real broker's size rejections are in tests/integration/test_delivery_integration.py."""

from __future__ import annotations

import psycopg2
from kafka import TopicPartition
from kafka.errors import (
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    TopicAuthorizationFailedError,
)

from ingest.contracts import DeadLetter, decode
from ingest.delivery import DEAD_LETTER_OVERHEAD, RECORD_OVERHEAD_BOUND, Delivery, TopicLimits, message_size
from ingest.errors import InvalidMessage, TransientError, classify, rejects_record
from ingest.loop import Batch, ConsumerLoop, Record
from tests.fakes import FakeConsumer, FakeProducer
from tests.loop_helpers import TOPIC, config


def consumer(n: int) -> FakeConsumer:
    return FakeConsumer({TopicPartition(TOPIC, 0): [(f"k{i}".encode(), b"v") for i in range(n)]})


def test_one_classification_for_the_loop_and_the_api() -> None:
    assert classify(TransientError("db down")) == "transient"
    assert classify(ConnectionResetError()) == "transient"
    assert classify(KafkaTimeoutError()) == "transient"
    assert classify(psycopg2.OperationalError()) == "transient"
    assert classify(InvalidMessage("not json")) == "permanent"
    assert classify(TopicAuthorizationFailedError()) == "unexpected"
    assert classify(AttributeError("bug")) == "unexpected"
    assert rejects_record(MessageSizeTooLargeError())
    assert not rejects_record(TopicAuthorizationFailedError())


def test_a_topic_the_broker_refuses_holds_the_batch_and_marks_the_service_unready() -> None:
    """No ACL on the output topic: dead-lettering would drain the input (every record fails alike), so the
    loop holds the batch, reports why on /ready, commits nothing, and goes on once the ACL is there."""
    c = consumer(4)
    producer = FakeProducer(refuse={"out": TopicAuthorizationFailedError("no WRITE on out")})
    calls: list[tuple[bool, str]] = []

    def handle(batch: Batch) -> None:
        calls.append(loop.readiness())
        if len(calls) == 3:  # the operator adds the ACL while the batch is held
            producer.refuse.clear()
        for r in batch.records:
            batch.produce("out", r.key, b"verdict", source=r)

    loop = ConsumerLoop(c, producer, handle, config(breaker_probe_s=0.001))
    stats = loop.run(max_records=4)
    assert calls[0] == (True, "ready")
    ready, why = calls[1]
    assert not ready and "refuses writes to out" in why and "TopicAuthorizationFailedError" in why
    assert (stats.processed, stats.dead_lettered) == (4, 0)
    assert [t for t, _, _ in producer.sent] == ["out"] * 4  # no dead letters
    assert c.commits == {TopicPartition(TOPIC, 0): 4} and c.commit_calls == 1
    assert loop.readiness() == (True, "ready")


def test_an_unsourced_output_over_the_limit_fails_every_record_of_its_batch() -> None:
    """An output that names no source record (an announcement about the whole batch) cannot be pinned on
    one record: every record of the batch is dead-lettered with the reason, none is lost."""
    producer = FakeProducer()

    def handle(batch: Batch) -> None:
        batch.produce("out", None, b"x" * 5000)

    limits = TopicLimits(lambda topics: {"out": 2000})
    loop = ConsumerLoop(consumer(3), producer, handle, config(), delivery=Delivery(producer, "test", limits))
    stats = loop.run(max_records=3)
    assert (stats.processed, stats.dead_lettered) == (0, 3)
    letters = [decode(DeadLetter, v or b"") for t, _, v in producer.sent if t == "t.dlq"]
    assert {dl.code for dl in letters} == {"output_too_large"} and len(letters) == 3


def test_a_dead_letter_fits_the_dead_letter_topics_own_limit() -> None:
    producer = FakeProducer()
    limit = 100_000
    delivery = Delivery(producer, "test", TopicLimits(lambda topics: {"t.dlq": limit}))
    record = Record(TOPIC, 0, 7, b"k", b"y" * 300_000)
    batch = Batch([record])
    batch.fail(record, InvalidMessage("bad"))
    delivery.deliver(batch, attempt=1)
    [(topic, _, value)] = producer.sent
    letter = decode(DeadLetter, value or b"")
    assert topic == "t.dlq" and len(value or b"") <= limit
    assert len(letter.payload()) == (limit - DEAD_LETTER_OVERHEAD) * 3 // 4
    assert letter.reason.startswith("[payload truncated from 300000")


def test_a_limit_that_cannot_be_read_falls_back_to_kafkas_default() -> None:
    def broken(topics: list[str]) -> dict[str, int]:
        raise TopicAuthorizationFailedError("no DESCRIBE_CONFIGS")

    assert TopicLimits(broken).limit("out") == 1_048_588


def test_the_quick_size_bound_never_passes_a_message_the_exact_estimate_would_refuse() -> None:
    for key, value in [(None, b""), (b"k" * 200, b"v" * 5000), (b"k", b"v" * 2_000_000)]:
        overhead = message_size(key, value) - len(value) - len(key or b"")
        assert 0 < overhead <= RECORD_OVERHEAD_BOUND
