"""Factories for kafka-python clients configured the way the consumer loop needs them."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka import codec as kafka_codec

from ingest.settings import KafkaSettings

logger = logging.getLogger(__name__)

# The compression codecs a producer may use, and what kafka-python needs to decode each.
CODEC_PACKAGES = {"gzip": "(stdlib)", "snappy": "python-snappy", "lz4": "lz4", "zstd": "zstandard"}


def missing_codecs() -> list[str]:
    """Codecs this process cannot decode (their package is not installed)."""
    have = {
        "gzip": kafka_codec.has_gzip(),
        "snappy": kafka_codec.has_snappy(),
        "lz4": kafka_codec.has_lz4(),
        "zstd": kafka_codec.has_zstd(),
    }
    return [name for name, ok in have.items() if not ok]


class RevocationTracker(ConsumerRebalanceListener):
    """Remembers the partitions a rebalance took from this member, for the loop to drop their records.

    kafka-python calls the listener from inside ``poll()``, so a batch assembled over several polls can
    hold records of a partition that was revoked in between (and maybe assigned back, re-read from the
    group's committed offset): those records must be neither handled nor committed by this member.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._revoked: set[TopicPartition] = set()

    def on_partitions_revoked(self, revoked: Any) -> None:
        with self._lock:
            self._revoked.update(revoked)

    def on_partitions_assigned(self, assigned: Any) -> None:
        pass

    def take(self) -> set[TopicPartition]:
        """The partitions revoked since the last call."""
        with self._lock:
            out, self._revoked = self._revoked, set()
        return out


def make_consumer(
    kafka: KafkaSettings,
    group_id: str,
    topics: Sequence[str],
    listener: ConsumerRebalanceListener | None = None,
    **overrides: Any,
) -> KafkaConsumer:
    """A group consumer that never commits on its own: the loop commits after results are durable."""
    kw: dict[str, Any] = {
        **kafka.client_kwargs(),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": kafka.max_poll_records,
        "max_poll_interval_ms": kafka.max_poll_interval_ms,
        "session_timeout_ms": kafka.session_timeout_ms,
        "heartbeat_interval_ms": max(1000, kafka.session_timeout_ms // 10),
    }
    kw.update(overrides)
    missing = missing_codecs()
    if missing:
        # A producer using one of these would stall this consumer on its first batch (the loop retries it
        # and counts it, so it alerts; it never crash-loops). Say it once, at start, with the fix.
        logger.warning(
            "cannot decode Kafka batches compressed with %s: install %s",
            ", ".join(missing),
            ", ".join(CODEC_PACKAGES[m] for m in missing),
        )
    consumer = KafkaConsumer(**kw)
    if listener is not None:
        consumer.subscribe(list(topics), listener=listener)
    else:
        consumer.subscribe(list(topics))
    return consumer


def producer_kwargs(kafka: KafkaSettings, **overrides: Any) -> dict[str, Any]:
    """An idempotent producer that waits for all in-sync replicas: a flushed send is durable.

    Retries are not counted but bounded in time (kafka-python's ``delivery_timeout_ms``, 120 s): while a
    broker dies and its partitions get new leaders, or the in-sync set is briefly short of
    ``min.insync.replicas``, a send keeps retrying instead of failing after a few quick attempts; callers
    bound their own wait (``flush(timeout)``, ``future.get(timeout)``). Idempotence keeps the retries from
    writing a record twice. Batches are compressed with ``kafka.compression_type`` (lz4 by default).
    """
    kw: dict[str, Any] = {
        **kafka.client_kwargs(),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
    }
    if kafka.compression_type != "none":
        kw["compression_type"] = kafka.compression_type
    kw.update(overrides)
    return kw


def make_producer(kafka: KafkaSettings, **overrides: Any) -> KafkaProducer:
    """A producer configured by ``producer_kwargs``."""
    return KafkaProducer(**producer_kwargs(kafka, **overrides))


def make_admin(kafka: KafkaSettings) -> KafkaAdminClient:
    return KafkaAdminClient(**kafka.client_kwargs())
