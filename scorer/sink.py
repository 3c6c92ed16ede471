"""Where verdicts become durable: the ``images`` and ``verdicts`` tables, in one transaction per batch.

Both inserts are keyed upserts that keep the first row (``ON CONFLICT DO NOTHING``): a replayed record,
scored again by the same model version, changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import psycopg2
import psycopg2.extensions
from psycopg2.extras import execute_values

from ingest.contracts import Verdict
from ingest.db import connect
from ingest.errors import TransientError
from ingest.settings import PostgresSettings

logger = logging.getLogger(__name__)

INSERT_IMAGES = """
INSERT INTO images (id, ref, sha256, source, submitted_at, metadata, pdq, pdq_quality) VALUES %s
ON CONFLICT (id) DO UPDATE SET pdq = EXCLUDED.pdq, pdq_quality = EXCLUDED.pdq_quality
WHERE images.pdq IS NULL AND EXCLUDED.pdq IS NOT NULL
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
    """Keeps one connection; a broken connection becomes a ``TransientError`` and is reopened next time."""

    def __init__(self, pg: PostgresSettings) -> None:
        self.pg = pg
        self._conn: psycopg2.extensions.connection | None = None

    def _connection(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.pg)
        return self._conn

    def write(self, images: list[ImageRow], verdicts: list[Verdict]) -> None:
        try:
            conn = self._connection()
            with conn, conn.cursor() as cur:  # commits on success, rolls back on error
                if images:
                    execute_values(cur, INSERT_IMAGES, [_image_values(i) for i in images])
                if verdicts:
                    execute_values(cur, INSERT_VERDICTS, [_verdict_values(v) for v in verdicts])
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as e:
            self.close()
            raise TransientError(f"PostgreSQL unavailable: {e}".strip()) from e

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()
            self._conn = None


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
