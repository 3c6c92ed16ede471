"""Feedback consumer: ``moderation.feedback`` -> PostgreSQL ``feedback`` (one row per moderator per image).

Per batch: parse every record (malformed -> DLQ ``invalid_message``, a label other than real/fake ->
``unknown_label``), look the images up in one query (unknown image -> ``unknown_image``), then upsert the
valid labels in one transaction. A moderator's later label wins: the upsert only replaces a row whose
``labelled_at`` is older than the incoming one, so a replayed or out-of-order record changes nothing. The
training label is the majority across moderators (view ``feedback_majority``; ties are left out and counted
by ``majority_labels``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import psycopg2.extras
from prometheus_client import CollectorRegistry, Counter

from ingest.contracts import Feedback, decode
from ingest.db import Database, transaction
from ingest.errors import InvalidMessage, PermanentError
from ingest.loop import Batch, Record
from ingest.settings import PostgresSettings
from ingest.topics import KNOWN_CONTENT_UPDATES
from retrainer.known import DEFAULT_MIN_QUALITY, announce, sync_moderation_entries

logger = logging.getLogger(__name__)


@dataclass
class FeedbackMetrics:
    feedback: Counter
    known: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> FeedbackMetrics:
        return cls(
            Counter(
                "retrainer_feedback_total",
                "Feedback messages by outcome: stored (new or newer label), stale (older or replayed), "
                "invalid (dead-lettered)",
                ["outcome"],
                registry=registry,
            ),
            Counter(
                "retrainer_known_content_total",
                "Known-content list changes from moderator labels: changed (entry added, relabelled or "
                "taken off), no_hash (labelled image without a usable PDQ hash, left off the lists), "
                "announced (entry states sent on known_content.updates)",
                ["outcome"],
                registry=registry,
            ),
        )


def parse_feedback(record: Record) -> Feedback:
    """The record as ``Feedback``; ``PermanentError`` with code ``invalid_message`` or ``unknown_label``."""
    try:
        return decode(Feedback, record.value)
    except InvalidMessage as e:
        try:
            raw = json.loads(record.value or b"")
        except ValueError:
            raise e from None
        if isinstance(raw, dict) and "label" in raw and raw["label"] not in ("real", "fake"):
            raise PermanentError(
                f"unknown label {str(raw['label'])[:40]!r}: expected 'real' or 'fake'", "unknown_label"
            ) from None
        raise


class FeedbackHandler:
    """Consumer-loop handler; results are committed in PostgreSQL before the loop commits offsets."""

    def __init__(
        self,
        pg: PostgresSettings,
        metrics: FeedbackMetrics | None = None,
        known_topic: str | None = KNOWN_CONTENT_UPDATES,
        min_quality: int = DEFAULT_MIN_QUALITY,
    ) -> None:
        """``known_topic`` None: labels are stored but the known-content lists are not kept."""
        self.db = Database(pg)
        self.metrics = metrics
        self.known_topic = known_topic
        self.min_quality = min_quality

    def close(self) -> None:
        self.db.close()

    def __call__(self, batch: Batch) -> None:
        parsed: list[tuple[Record, Feedback]] = []
        for r in batch.records:
            try:
                parsed.append((r, parse_feedback(r)))
            except PermanentError as e:
                logger.info("dead-lettering %s: %s", r.where, e.reason)
                batch.fail(r, e)
        with self.db.cursor() as cur:
            ids = sorted({f.image_id for _, f in parsed})
            cur.execute("SELECT id FROM images WHERE id = ANY(%s)", (ids,))
            known = {row[0] for row in cur.fetchall()}
            # One row per (image, moderator) per statement: the newest label of the batch (the first
            # one on equal timestamps, as sequential upserts would keep it).
            latest: dict[tuple[str, str], Feedback] = {}
            for r, f in parsed:
                if f.image_id not in known:
                    logger.info("dead-lettering %s: unknown image %s", r.where, f.image_id)
                    batch.fail(r, PermanentError(f"unknown image {f.image_id}", "unknown_image"))
                    continue
                k = (f.image_id, f.moderator)
                if k not in latest or f.labelled_at > latest[k].labelled_at:
                    latest[k] = f
            stored = 0
            if latest:
                rows = psycopg2.extras.execute_values(
                    cur,
                    "INSERT INTO feedback (image_id, moderator, label, note, labelled_at) VALUES %s"
                    " ON CONFLICT (image_id, moderator) DO UPDATE SET label = EXCLUDED.label,"
                    " note = EXCLUDED.note, labelled_at = EXCLUDED.labelled_at, received_at = now()"
                    " WHERE feedback.labelled_at < EXCLUDED.labelled_at RETURNING image_id",
                    [
                        (f.image_id, f.moderator, f.label, f.note or "", f.labelled_at)
                        for f in latest.values()
                    ],
                    fetch=True,
                )
                stored = len(rows)
            # Every labelled image of the batch, stored or stale: a retried batch re-announces the same
            # entry states, so none is lost between this commit and the producer's flush.
            sync = None
            if self.known_topic is not None:
                sync = sync_moderation_entries(cur, {k[0] for k in latest}, self.min_quality)
        if sync is not None and self.known_topic is not None:
            for key, value in announce(sync.updates):
                batch.produce(self.known_topic, key, value)
        if self.metrics:
            n_valid = len(list(batch.pending()))
            self.metrics.feedback.labels("stored").inc(stored)
            self.metrics.feedback.labels("stale").inc(n_valid - stored)
            self.metrics.feedback.labels("invalid").inc(len(batch.failures))
            if sync is not None:
                self.metrics.known.labels("changed").inc(sync.changed)
                self.metrics.known.labels("no_hash").inc(sync.no_hash)
                self.metrics.known.labels("announced").inc(len(sync.updates))


@dataclass(frozen=True)
class MajorityLabels:
    labels: dict[str, int]  # image_id -> 0 real / 1 fake
    ties: int
    agreement: float | None  # share of multi-moderator images where every moderator agreed


def majority_labels(pg: PostgresSettings) -> MajorityLabels:
    """Training labels: the majority across moderators per image; ties are left out and counted."""
    with transaction(pg) as cur:
        cur.execute("SELECT image_id, n_real, n_fake, label FROM feedback_majority")
        rows = cur.fetchall()
    labels = {i: int(label == "fake") for i, _r, _f, label in rows if label is not None}
    ties = sum(1 for row in rows if row[3] is None)
    multi = [(nr, nf) for _i, nr, nf, _lab in rows if nr + nf > 1]
    agreement = sum(1 for nr, nf in multi if nr == 0 or nf == 0) / len(multi) if multi else None
    return MajorityLabels(labels, ties, agreement)
