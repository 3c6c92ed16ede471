"""Re-scoring after a champion change: resubmit the images a given version scored in a time window.

The references go back on ``images.submitted`` (same image id, ``metadata.rescore_of`` = the old version), so
the scorers, now serving the new champion, add verdicts keyed on (image_id, new version); the old verdicts
stay. Images that travelled inline and were not stored have no reference and are counted, not resubmitted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime

from kafka import KafkaProducer

from ingest.contracts import ImageSubmitted, encode, utcnow
from ingest.db import transaction
from ingest.kafka import make_producer
from ingest.settings import StackSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RescoreResult:
    version: str
    resubmitted: int
    without_reference: int


def _has_verdict(stack: StackSettings, image_id: str, version: str) -> bool:
    with transaction(stack.pg) as cur:
        cur.execute("SELECT 1 FROM verdicts WHERE image_id = %s AND model_version = %s", (image_id, version))
        return cur.fetchone() is not None


def rescore(
    stack: StackSettings,
    version: str,
    since: datetime,
    topic: str,
    until: datetime | None = None,
    new_version: str | None = None,
    wait_s: float = 120.0,
) -> RescoreResult:
    """Resubmit every image ``version`` scored in [since, until); flushed before returning.

    With ``new_version``, the first image is a probe: it is resubmitted (every 10 s) until a verdict from
    ``new_version`` appears, and only then are the others sent, so that they are not scored again by a scorer
    that has not swapped yet (its upsert would keep the old verdict and add nothing). ``TimeoutError`` after
    ``wait_s`` with nothing else sent.
    """
    with transaction(stack.pg) as cur:
        cur.execute(
            "SELECT v.image_id, i.ref, i.source FROM verdicts v LEFT JOIN images i ON i.id = v.image_id"
            " WHERE v.model_version = %s AND v.scored_at >= %s AND (%s::timestamptz IS NULL OR"
            " v.scored_at < %s) ORDER BY v.scored_at",
            (version, since, until, until),
        )
        rows = cur.fetchall()
    producer = make_producer(stack.kafka)
    todo = [
        ImageSubmitted(
            image_id=i,
            ref=ref,
            submitted_at=utcnow(),
            source=source or "rescore",
            metadata={"rescore_of": version},
        )
        for i, ref, source in rows
        if ref
    ]
    missing = len(rows) - len(todo)
    try:
        if new_version and todo:
            _probe(stack, producer, topic, todo[0], new_version, wait_s)
        for msg in todo:
            producer.send(topic, key=msg.image_id.encode(), value=encode(msg))
        producer.flush(60)
    finally:
        producer.close(10)
    logger.info(
        "re-scoring %d image(s) scored by %s since %s (%d without a reference)",
        len(todo),
        version,
        since,
        missing,
    )
    return RescoreResult(version, len(todo), missing)


def _probe(
    stack: StackSettings, producer: KafkaProducer, topic: str, msg: ImageSubmitted, new: str, wait_s: float
) -> None:
    deadline = time.monotonic() + wait_s
    while not _has_verdict(stack, msg.image_id, new):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no verdict from {new} after {wait_s:.0f}s: are the scorers serving it?")
        producer.send(topic, key=msg.image_id.encode(), value=encode(msg))
        producer.flush(30)
        resend = time.monotonic() + 10
        while time.monotonic() < min(resend, deadline) and not _has_verdict(stack, msg.image_id, new):
            time.sleep(0.5)
