"""Keep a scorer's known-content index in step with PostgreSQL ``known_content`` and its update topic.

A background thread (no consumer group: every scorer must see every update) first notes where
``known_content.updates`` ends, then loads the table, then follows the topic from the noted offset. An
update written after the note is therefore seen twice at worst (once in the table, once on the topic),
never missed, and applying an entry's state twice changes nothing. The scorer waits for the first load
(``wait_ready``) before it consumes images, so a scorer that starts never scores against empty lists
while lists exist.

Anything wrong with one update (unparseable) is logged and counted and the index keeps its state; a
lost connection to Kafka or PostgreSQL is retried. ``scorer_known_content_ready`` is 0 until the first
load, so a dashboard can tell a scorer whose lists are not loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

import psycopg2.extensions
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ingest.contracts import KnownContentUpdate, decode, utcnow
from ingest.db import transaction
from ingest.errors import InvalidMessage
from ingest.settings import KafkaSettings, PostgresSettings
from ingest.topics import KNOWN_CONTENT_UPDATES
from scorer.follower import TopicFollower
from scorer.known_index import Entry, KnownIndex
from scorer.pdq import from_hex

logger = logging.getLogger(__name__)

# The column order row_to_update reads; statements elsewhere spell it out (SQL is built from literals only).
ENTRY_COLUMNS = "id, pdq, label, active, source, image_id, moderators, updated_at"
# From a moderator's label being stored to a scorer applying it: the target is a few seconds.
DELAY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 120.0)


def row_to_update(row: Sequence[object]) -> KnownContentUpdate:
    """A ``known_content`` row (columns ``ENTRY_COLUMNS``) as the message that announces it."""
    eid, pdq, label, active, source, image_id, moderators, updated_at = row
    assert isinstance(updated_at, datetime)
    return KnownContentUpdate(
        entry_id=int(str(eid)),
        pdq=str(pdq),
        label=label,  # type: ignore[arg-type]  # CHECK constraint: real | fake
        active=bool(active),
        source=source,  # type: ignore[arg-type]  # CHECK constraint: moderation | import
        image_id=None if image_id is None else str(image_id),
        moderators=int(str(moderators)),
        updated_at=updated_at,
    )


def load_entries(cur: psycopg2.extensions.cursor, active_only: bool = True) -> list[KnownContentUpdate]:
    """Every entry (or every active one) in id order: what a scorer loads before it scores."""
    where = "WHERE active" if active_only else ""
    cur.execute(f"SELECT {ENTRY_COLUMNS} FROM known_content {where} ORDER BY id")
    return [row_to_update(r) for r in cur.fetchall()]


def to_entry(u: KnownContentUpdate) -> Entry:
    return Entry(
        entry_id=u.entry_id,
        hash=from_hex(u.pdq).tobytes(),
        label=u.label,
        active=u.active,
        image_id=u.image_id,
        moderators=u.moderators,
        source=u.source,
    )


class KnownContentWatcher(TopicFollower):
    name = "known-content"
    poll_ms = 200  # an update should reach the index within a fraction of a second

    def __init__(
        self,
        kafka: KafkaSettings,
        pg: PostgresSettings,
        index: KnownIndex,
        registry: CollectorRegistry,
        topic: str = KNOWN_CONTENT_UPDATES,
        app: str = "scorer",
    ) -> None:
        self.kafka = kafka
        self.pg = pg
        self.index = index
        self.topic = topic
        self.updates = Counter(
            f"{app}_known_content_updates_total",
            "Known-content entry states applied to the index, by outcome (loaded at start, applied from "
            "the topic, invalid_message)",
            ["outcome"],
            registry=registry,
        )
        self.entries = Gauge(
            f"{app}_known_content_entries", "Active entries in the in-memory index", registry=registry
        )
        self.ready_gauge = Gauge(
            f"{app}_known_content_ready", "1 once the lists were loaded from PostgreSQL", registry=registry
        )
        self.delay = Histogram(
            f"{app}_known_content_update_delay_seconds",
            "From an entry's change in PostgreSQL (updated_at) to this scorer applying it",
            buckets=DELAY_BUCKETS,
            registry=registry,
        )
        super().__init__()  # wait_ready: the lists existing at start are in the index

    def _on_records(self, consumer: KafkaConsumer, records: Sequence[ConsumerRecord]) -> None:
        self._apply_records([m.value for m in records])

    def _open(self) -> KafkaConsumer:
        consumer = KafkaConsumer(**self.kafka.client_kwargs(), enable_auto_commit=False)
        try:
            tp = TopicPartition(self.topic, 0)
            consumer.assign([tp])
            end = consumer.end_offsets([tp])[tp]  # noted before the table is read: nothing falls between
            # On a reconnect the table is read again: updates missed while disconnected are in it.
            with transaction(self.pg) as cur:
                entries = load_entries(cur, active_only=not self._ready.is_set())
            self.index.apply(to_entry(u) for u in entries)
            consumer.seek(tp, end)
        except Exception:
            consumer.close()
            raise
        self.updates.labels("loaded").inc(len(entries))
        self.entries.set(len(self.index))
        if not self._ready.is_set():
            logger.info("known-content lists loaded: %d active entries", len(self.index))
        self._ready.set()
        self.ready_gauge.set(1)
        return consumer

    def _apply_records(self, values: list[bytes | None]) -> None:
        updates = []
        for value in values:
            try:
                updates.append(decode(KnownContentUpdate, value))
            except InvalidMessage as e:
                logger.error("ignoring known-content update: %s", e.reason)
                self.updates.labels("invalid_message").inc()
        if not updates:
            return
        self.index.apply(to_entry(u) for u in updates)
        now = utcnow()
        for u in updates:
            self.delay.observe(max(0.0, (now - u.updated_at).total_seconds()))
        self.updates.labels("applied").inc(len(updates))
        self.entries.set(len(self.index))
