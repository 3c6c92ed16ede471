"""Known-content lists: curated here, in PostgreSQL ``known_content``, announced on ``known_content.updates``.

The retrainer's feedback consumer is the one component that curates the lists (scorers only read them):

- a *moderation* entry per labelled image follows the image's majority label across moderators (view
  ``feedback_majority``): on the list with that label while there is a majority, off it (``active = false``)
  on a tie. Its hash is the PDQ the scorer stored with the image; an image without a hash, or with a
  hash of quality below ``min_quality`` (featureless pictures: flat colours, gradients, which would match
  each other), is left off;
- an *import* entry per hash comes from an operator's CSV (``python -m retrainer known import``).

Announcements carry the entry's whole current state, read back inside the transaction that wrote it, so a
replayed batch announces the same states again: an announcement lost between the database commit and the
producer flush (the loop then retries the batch) is sent on the retry.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import IO

import psycopg2.extensions
from psycopg2.extras import execute_values

from ingest.contracts import KnownContentUpdate, encode
from ingest.known_csv import CSV_FIELDS, CsvRow
from scorer.known_watcher import row_to_update

logger = logging.getLogger(__name__)

# HMA's default: PDQ quality below 50 means too little structure for the hash to be distinctive.
DEFAULT_MIN_QUALITY = 50

# One statement per batch: the majority label, the image's hash, and the entry if there is one.
_SYNC_SELECT = """
SELECT m.image_id, m.label, CASE m.label WHEN 'fake' THEN m.n_fake ELSE m.n_real END,
       i.pdq, i.pdq_quality, k.id, k.label, k.active, k.moderators, k.pdq
FROM feedback_majority m
JOIN images i ON i.id = m.image_id
LEFT JOIN known_content k ON k.source = 'moderation' AND k.image_id = m.image_id
WHERE m.image_id = ANY(%s)
"""


@dataclass(frozen=True)
class SyncResult:
    changed: int  # entries created or changed by this batch
    no_hash: int  # labelled images that cannot go on a list (no hash, or quality below the minimum)
    updates: list[KnownContentUpdate]  # current state of every entry the batch touched


def sync_moderation_entries(
    cur: psycopg2.extensions.cursor, image_ids: Iterable[str], min_quality: int = DEFAULT_MIN_QUALITY
) -> SyncResult:
    """Bring the moderation entries of ``image_ids`` in line with their majority labels, in the caller's
    transaction; returns the current state of every entry of those images, changed or not."""
    ids = sorted(set(image_ids))
    if not ids:
        return SyncResult(0, 0, [])
    cur.execute(_SYNC_SELECT, (ids,))
    inserts: list[tuple[str, str, str, int]] = []
    updates: list[tuple[int, str, bool, int, str]] = []
    no_hash = 0
    for image_id, label, agree, pdq, quality, eid, k_label, k_active, k_mods, k_pdq in cur.fetchall():
        hashable = pdq is not None and quality is not None and quality >= min_quality
        if eid is None:
            if label is None:
                continue
            if not hashable:
                no_hash += 1
                continue
            inserts.append((pdq, label, image_id, agree))
            continue
        want_active = label is not None and hashable
        want_label = label if label is not None else k_label
        want = (want_label, want_active, agree if label is not None else 0, pdq if hashable else k_pdq)
        if want != (k_label, k_active, k_mods, k_pdq):
            updates.append((eid, want_label, want_active, want[2], want[3]))
    if inserts:
        execute_values(
            cur,
            "INSERT INTO known_content (pdq, label, source, image_id, moderators) VALUES %s"
            " ON CONFLICT DO NOTHING",
            [(p, lab, "moderation", i, a) for p, lab, i, a in inserts],
        )
    if updates:
        execute_values(
            cur,
            "UPDATE known_content k SET label = v.label, active = v.active, moderators = v.moderators,"
            " pdq = v.pdq, updated_at = now() FROM (VALUES %s) AS v(id, label, active, moderators, pdq)"
            " WHERE k.id = v.id",
            updates,
            template="(%s::bigint, %s, %s::boolean, %s::integer, %s)",
        )
    cur.execute(
        "SELECT id, pdq, label, active, source, image_id, moderators, updated_at FROM known_content"
        " WHERE source = 'moderation' AND image_id = ANY(%s) ORDER BY id",
        (ids,),
    )
    return SyncResult(len(inserts) + len(updates), no_hash, [row_to_update(r) for r in cur.fetchall()])


def announce(updates: Iterable[KnownContentUpdate]) -> list[tuple[bytes, bytes]]:
    """(key, value) records for ``known_content.updates``; the key is the entry id (compaction-friendly)."""
    return [(str(u.entry_id).encode(), encode(u)) for u in updates]


# -- operators' CSV ------------------------------------------------------------------------------------


def import_rows(cur: psycopg2.extensions.cursor, rows: Sequence[CsvRow]) -> list[KnownContentUpdate]:
    """Upsert imported entries by hash (a re-import updates label and note and re-activates them)."""
    if not rows:
        return []
    latest = {r.pdq: r for r in rows}  # the last row for a hash wins, as it would row by row
    out = execute_values(
        cur,
        "INSERT INTO known_content (pdq, label, source, note) VALUES %s"
        " ON CONFLICT (pdq) WHERE source = 'import' DO UPDATE SET label = EXCLUDED.label,"
        " note = EXCLUDED.note, active = true, updated_at = now()"
        " RETURNING id, pdq, label, active, source, image_id, moderators, updated_at",
        [(r.pdq, r.label, "import", r.note) for r in latest.values()],
        fetch=True,
    )
    return [row_to_update(r) for r in out]


def export_csv(cur: psycopg2.extensions.cursor, out: IO[str], label: str | None = None) -> int:
    """Write the active entries (both sources; optionally one label) as ``pdq,label,note``; returns rows."""
    cur.execute(
        "SELECT pdq, label, CASE WHEN source = 'moderation'"
        " THEN 'moderators: ' || moderators || ', image ' || image_id ELSE note END"
        " FROM known_content WHERE active AND (%s::text IS NULL OR label = %s) ORDER BY id",
        (label, label),
    )
    writer = csv.writer(out)
    writer.writerow(CSV_FIELDS)
    n = 0
    for row in cur:
        writer.writerow(row)
        n += 1
    return n
