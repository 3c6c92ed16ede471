"""The consumer loop across rebalances, against in-memory clients (the real group:
tests/integration/test_churn.py)."""

from __future__ import annotations

from collections.abc import Callable

from kafka import TopicPartition
from prometheus_client import CollectorRegistry

from ingest.lag import LagReporter
from ingest.loop import ConsumerLoop, Record
from ingest.metrics import LoopMetrics
from tests.fakes import FakeConsumer, FakeProducer
from tests.loop_helpers import TOPIC, config, make


class _Tracker:
    """A rebalance listener the test drives: the partitions it reports as revoked."""

    def __init__(self) -> None:
        self.revoked: set[TopicPartition] = set()

    def take(self) -> set[TopicPartition]:
        out, self.revoked = self.revoked, set()
        return out


def _run_with_a_rebalance_in_the_second_poll(
    consumer: FakeConsumer, rebalance: Callable[[_Tracker], None]
) -> list[bytes]:
    """Run the loop (batches of up to 4, assembled from polls of 2) with ``rebalance`` applied inside its
    second poll, as kafka-python calls the listener from inside ``poll()``; the values handled, in order."""
    tracker = _Tracker()
    real_poll = consumer.poll
    calls = {"n": 0}

    def poll(timeout_ms: int = 0, max_records: int | None = None, update_offsets: bool = True) -> object:
        calls["n"] += 1
        if calls["n"] == 2:
            rebalance(tracker)
        return real_poll(timeout_ms, 2)

    consumer.poll = poll  # type: ignore[method-assign]
    seen: list[bytes] = []
    loop = ConsumerLoop(
        consumer,
        FakeProducer(),
        lambda b: seen.extend(r.value or b"" for r in b.records),
        config(max_batch=4, max_wait_ms=200),
        revocations=tracker,
    )
    loop.run(idle_timeout=0.5)
    return seen


def test_records_of_a_partition_revoked_mid_batch_are_neither_handled_nor_committed() -> None:
    """A batch assembled over several polls: a rebalance (seen by the listener during the second poll) takes
    partition 1 away. Its records polled before must not be handled or committed by this member."""
    consumer = make([[b"a0"], [b"b0", b"b1"]])  # the first poll returns all three
    p1 = TopicPartition(TOPIC, 1)

    def to_another_member(tracker: _Tracker) -> None:
        tracker.revoked.add(p1)
        consumer.partitions.pop(p1)

    seen = _run_with_a_rebalance_in_the_second_poll(consumer, to_another_member)
    assert seen == [b"a0"]
    assert consumer.commits == {TopicPartition(TOPIC, 0): 1}


def test_a_partition_revoked_and_assigned_back_is_read_again_from_the_committed_offset() -> None:
    """kafka-python revokes every partition in a rebalance and keeps the fetch position of one that comes
    back to the same member. The records dropped from the batch in flight must be read again, not skipped
    (found by the churn run, harness/churn.py: records lost while scorers joined and left)."""
    consumer = make([[b"a0", b"a1", b"a2", b"a3", b"a4", b"a5"]])

    def straight_back(tracker: _Tracker) -> None:  # the position stays past a0, a1
        tracker.revoked.add(TopicPartition(TOPIC, 0))

    seen = _run_with_a_rebalance_in_the_second_poll(consumer, straight_back)
    assert seen == [b"a0", b"a1", b"a2", b"a3", b"a4", b"a5"]
    assert consumer.commits == {TopicPartition(TOPIC, 0): 6}


def test_a_committed_offset_never_moves_back() -> None:
    consumer = make([[b"a", b"b", b"c"]])
    loop = ConsumerLoop(consumer, FakeProducer(), lambda b: None, config())
    loop._commit([Record(TOPIC, 0, 2, None, b"c")])
    loop._commit([Record(TOPIC, 0, 0, None, b"a")])  # a stale replay of an earlier offset
    assert consumer.commits == {TopicPartition(TOPIC, 0): 3} and consumer.commit_calls == 1


def test_lag_of_partitions_lost_in_a_rebalance_is_no_longer_reported() -> None:
    registry = CollectorRegistry()
    consumer = make([[b"a", b"b"], [b"c"]])
    metrics = LoopMetrics.create("test", registry)
    reporter = LagReporter(metrics.lag)

    def lag(partition: int) -> float | None:
        return registry.get_sample_value(
            "test_consumer_lag_records", {"topic": TOPIC, "partition": str(partition)}
        )

    reporter.update(consumer)
    assert lag(0) == 2 and lag(1) == 1
    del consumer.partitions[TopicPartition(TOPIC, 1)]  # partition 1 moved to another member
    reporter.update(consumer)
    assert lag(0) == 2 and lag(1) is None
