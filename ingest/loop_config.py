"""The consumer loop's configuration, its result, and the client interfaces it needs (``ingest.loop``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from kafka import TopicPartition


class ConsumerLike(Protocol):
    def poll(
        self, timeout_ms: int = ..., max_records: int | None = ..., update_offsets: bool = ...
    ) -> Any: ...
    def commit(self, offsets: Any = ..., timeout_ms: int | None = ...) -> None: ...
    def seek(self, partition: TopicPartition, offset: int) -> None: ...
    def close(self, autocommit: bool = ..., timeout_ms: int | None = ...) -> None: ...
    def assignment(self) -> Any: ...
    def position(self, partition: TopicPartition, timeout_ms: int | None = ...) -> Any: ...
    def highwater(self, partition: TopicPartition) -> Any: ...


class Revocations(Protocol):
    def take(self) -> set[TopicPartition]: ...


class ProducerLike(Protocol):
    def send(self, topic: str, value: bytes | None = ..., key: bytes | None = ...) -> Any: ...
    def flush(self, timeout: float | None = ...) -> None: ...
    def close(self, timeout: float | None = ...) -> None: ...


@dataclass
class LoopConfig:
    service: str
    max_batch: int = 256
    max_wait_ms: int = 200
    min_wait_ms: int = 5
    poll_timeout_ms: int = 500
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    flush_timeout_s: float = 30.0
    # An unexpected error (neither transient nor bad input) is retried on the whole batch this many times,
    # with jittered backoff, before its records are isolated one by one and dead-lettered.
    unexpected_retries: int = 2
    # ingest/breaker.py: wholly failed batches in a row that stop the loop dead-lettering, and how often
    # it then retries the held batch.
    breaker_threshold: int = 2
    breaker_min_records: int = 8
    breaker_probe_s: float = 30.0


@dataclass
class RunStats:
    processed: int = 0
    dead_lettered: int = 0
    batches: int = 0
    retries: int = 0
    stopped_by: str = ""

    def summary(self) -> dict[str, object]:
        """What a service's ``run`` command prints when the loop stops."""
        return {
            "stopped_by": self.stopped_by,
            "processed": self.processed,
            "dead_lettered": self.dead_lettered,
        }
