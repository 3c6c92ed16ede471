"""In-memory stand-ins for kafka-python clients, for unit tests of pure loop logic only.

Every behaviour tested here is also tested against the real broker in test_loop_integration.py.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from kafka import TopicPartition
from kafka.structs import OffsetAndMetadata


@dataclass
class Msg:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = 0


@dataclass
class FakeConsumer:
    """Partitions are lists of (key, value); positions advance on poll, rewind on seek."""

    partitions: dict[TopicPartition, list[tuple[bytes | None, bytes | None]]]
    positions: dict[TopicPartition, int] = field(default_factory=dict)
    commits: dict[TopicPartition, int] = field(default_factory=dict)  # what the group has committed
    commit_calls: int = 0
    closed: bool = False
    timestamp_ms: int = 0  # the Kafka timestamp every message gets (0: none)

    def __post_init__(self) -> None:
        for tp in self.partitions:
            self.positions.setdefault(tp, 0)

    def poll(self, timeout_ms: int = 0, max_records: int | None = None, update_offsets: bool = True) -> Any:
        out: dict[TopicPartition, list[Msg]] = {}
        budget = max_records or 1_000_000
        for tp, items in sorted(self.partitions.items(), key=lambda kv: kv[0].partition):
            pos = self.positions[tp]
            take = items[pos : pos + budget]
            if take:
                out[tp] = [
                    Msg(tp.topic, tp.partition, pos + i, k, v, self.timestamp_ms)
                    for i, (k, v) in enumerate(take)
                ]
                self.positions[tp] = pos + len(take)
                budget -= len(take)
            if budget <= 0:
                break
        return out

    def commit(
        self, offsets: dict[TopicPartition, OffsetAndMetadata] | None = None, timeout_ms: Any = None
    ) -> None:
        assert offsets is not None
        self.commit_calls += 1
        for tp, om in offsets.items():
            self.commits[tp] = om.offset

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.positions[partition] = offset

    def close(self, autocommit: bool = True, timeout_ms: Any = None) -> None:
        self.closed = True

    def assignment(self) -> set[TopicPartition]:
        return set(self.partitions)

    def position(self, partition: TopicPartition, timeout_ms: Any = None) -> int:
        return self.positions[partition]

    def highwater(self, partition: TopicPartition) -> int:
        return len(self.partitions[partition])


@dataclass
class FakeProducer:
    sent: list[tuple[str, bytes | None, bytes | None]] = field(default_factory=list)
    pending: list[tuple[str, bytes | None, bytes | None]] = field(default_factory=list)
    fail_flush: int = 0
    closed: bool = False
    refuse: dict[str, BaseException] = field(default_factory=dict)  # topic -> what send() raises

    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> None:
        if topic in self.refuse:
            raise self.refuse[topic]
        self.pending.append((topic, key, value))

    def flush(self, timeout: float | None = None) -> None:
        if self.fail_flush:
            self.fail_flush -= 1
            self.pending.clear()
            raise TimeoutError("flush timed out")
        self.sent.extend(self.pending)
        self.pending.clear()

    def close(self, timeout: float | None = None) -> None:
        self.closed = True

    def by_topic(self) -> dict[str, list[tuple[bytes | None, bytes | None]]]:
        out: dict[str, list[tuple[bytes | None, bytes | None]]] = defaultdict(list)
        for t, k, v in self.sent:
            out[t].append((k, v))
        return out
