"""Where verdicts become durable: the ``images`` and ``verdicts`` tables, in one transaction per batch.

Both inserts are keyed upserts that keep the first row (``ON CONFLICT DO NOTHING``): a replayed record,
scored again by the same model version, changes nothing. An image row only gains what it lacked: its PDQ
hash, or its reference when an inline image left unstored (``persist_inline=flagged``) is stored later.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from psycopg2.extras import execute_values

from ingest.contracts import Verdict
from ingest.db import Database
from ingest.settings import PostgresSettings

logger = logging.getLogger(__name__)

INSERT_IMAGES = """
INSERT INTO images (id, ref, sha256, source, submitted_at, metadata, pdq, pdq_quality) VALUES %s
ON CONFLICT (id) DO UPDATE SET
    pdq = COALESCE(images.pdq, EXCLUDED.pdq),
    pdq_quality = CASE WHEN images.pdq IS NULL THEN EXCLUDED.pdq_quality ELSE images.pdq_quality END,
    ref = COALESCE(images.ref, EXCLUDED.ref)
WHERE (images.pdq IS NULL AND EXCLUDED.pdq IS NOT NULL) OR (images.ref IS NULL AND EXCLUDED.ref IS NOT NULL)
"""

INSERT_VERDICTS = """
INSERT INTO verdicts (image_id, model_version, p_fake, label, threshold, original_size, original_format,
                      submitted_at, scored_at, timings, signals)
VALUES %s
ON CONFLICT (image_id, model_version) DO NOTHING
"""


@dataclass(frozen=True)
class ImageRow:
    id: str
    ref: str | None
    sha256: str
    source: str
    submitted_at: datetime
    metadata: dict[str, str]
    pdq: str | None = None  # PDQ hex of the decoded pixels (known-content lists take it from here)
    pdq_quality: int | None = None


class VerdictSink(Protocol):
    def write(self, images: list[ImageRow], verdicts: list[Verdict]) -> None: ...
    def close(self) -> None: ...


class PostgresVerdictSink:
    """One transaction per batch on a reused connection (``ingest.db.Database``): a broken connection is
    dropped and becomes a ``TransientError``, and the next batch opens a new one."""

    def __init__(self, pg: PostgresSettings) -> None:
        self.db = Database(pg)

    def write(self, images: list[ImageRow], verdicts: list[Verdict]) -> None:
        with self.db.cursor() as cur:
            if images:
                # One statement per table and batch (the default pages of 100 rows made three round trips).
                # Postgres refuses an upsert that meets one key twice, so a batch that holds the same image
                # twice (a resubmission, a producer's retry) sends one row for it.
                unique = _unique_images(images)
                execute_values(cur, INSERT_IMAGES, [_image_values(i) for i in unique], page_size=len(unique))
            if verdicts:
                rows = [_verdict_values(v) for v in verdicts]
                execute_values(cur, INSERT_VERDICTS, rows, page_size=len(rows))

    def close(self) -> None:
        self.db.close()


def _unique_images(images: list[ImageRow]) -> list[ImageRow]:
    """One row per image id: the first, with a PDQ hash or reference it lacks taken from a later one (what
    the upsert would have done had the rows come one statement after the other)."""
    first: dict[str, ImageRow] = {}
    for row in images:
        seen = first.get(row.id)
        if seen is None:
            first[row.id] = row
        elif (seen.pdq is None and row.pdq is not None) or (seen.ref is None and row.ref is not None):
            hashed = seen if seen.pdq is not None else row
            first[row.id] = dataclasses.replace(
                seen, ref=seen.ref or row.ref, pdq=hashed.pdq, pdq_quality=hashed.pdq_quality
            )
    return list(first.values())


def _image_values(i: ImageRow) -> tuple[Any, ...]:
    return (i.id, i.ref, i.sha256, i.source, i.submitted_at, json.dumps(i.metadata), i.pdq, i.pdq_quality)


def _verdict_values(v: Verdict) -> tuple[Any, ...]:
    return (
        v.image_id,
        v.model_version,
        v.p_fake,
        v.label,
        v.threshold,
        list(v.original_size) if v.original_size else None,
        v.original_format,
        v.submitted_at,
        v.scored_at,
        json.dumps(v.timings_ms),
        None if v.signals is None else v.signals.model_dump_json(exclude_none=True),
    )
