"""Private topics for benches and tests: created, checked, and visible to clients before anyone uses them.

kafka-python's ``create_topics`` reports a topic the broker refused as an error code in its response rather
than raising, and returns before clients see the new partitions; a bench that went on anyway waited for
metadata until its phase timed out, and a consumer group that joined early got an empty first assignment
and rebalanced again.
"""

from __future__ import annotations

from collections.abc import Mapping

from kafka import KafkaConsumer
from kafka.admin import NewTopic

from harness.wait import wait_until
from ingest.kafka import make_admin
from ingest.settings import KafkaSettings


def create_topics(
    kafka: KafkaSettings,
    partitions: Mapping[str, int],
    replicas: int = 1,
    configs: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> None:
    """Create ``partitions`` (name -> partition count); raise ``RuntimeError`` with the broker's reason for
    any topic it refused, and return once a consumer's metadata shows every partition."""
    admin = make_admin(kafka)
    try:
        res = admin.create_topics(
            [NewTopic(n, p, replicas, topic_configs=dict(configs or {})) for n, p in partitions.items()]
        )
        failed = [t for t in (res or {}).get("topics", []) if t.get("error_code")]
        if failed:
            raise RuntimeError(f"the broker refused to create topics: {failed}")
    finally:
        admin.close()
    consumer = KafkaConsumer(**kafka.client_kwargs())
    try:

        def visible() -> bool:
            consumer.topics()  # refreshes the cluster metadata
            return all(len(consumer.partitions_for_topic(n) or ()) == p for n, p in partitions.items())

        wait_until(visible, timeout, f"metadata for {list(partitions)}", interval=0.2)
    finally:
        consumer.close()
