"""The review console's SQL: the active-learning queue, one item, labels, skips, history, models.

The queue holds each image's latest verdict that this moderator has neither labelled nor skipped
recently, ``uncertain`` first, then by |p_fake - threshold| (the labels that teach the model most),
then newest first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, TypeAlias

import psycopg2.extensions
from pydantic import ValidationError

from ingest.contracts import Feedback
from ingest.signals import Signals, reasons

Conn: TypeAlias = psycopg2.extensions.connection


@dataclass(frozen=True)
class Filters:
    label: str | None = None  # real | fake | uncertain
    model_version: str | None = None
    since: date | None = None
    until: date | None = None

    def query_string(self) -> str:
        from urllib.parse import urlencode

        pairs = {k: str(v) for k, v in vars(self).items() if v}
        return ("?" + urlencode(pairs)) if pairs else ""


@dataclass(frozen=True)
class QueueItem:
    image_id: str
    model_version: str
    p_fake: float
    label: str
    threshold: float
    scored_at: datetime


@dataclass
class Item:
    verdict: QueueItem
    ref: str | None
    original_size: list[int] | None
    original_format: str | None
    method: str | None = None
    keys: dict[str, str] = field(default_factory=dict)
    evidence: dict[str, Any] = field(default_factory=dict)
    my_label: str | None = None
    reasons: list[str] = field(default_factory=list)  # the verdict's signals in words (ingest.signals)


QUEUE_SQL = """
WITH latest AS (
    SELECT DISTINCT ON (v.image_id) v.image_id, v.model_version, v.p_fake, v.label, v.threshold, v.scored_at
    FROM verdicts v
    WHERE (%(mv)s::text IS NULL OR v.model_version = %(mv)s)
    ORDER BY v.image_id, v.scored_at DESC
)
SELECT l.image_id, l.model_version, l.p_fake, l.label, l.threshold, l.scored_at
FROM latest l
WHERE NOT EXISTS (SELECT 1 FROM feedback f WHERE f.image_id = l.image_id AND f.moderator = %(m)s)
  AND NOT EXISTS (SELECT 1 FROM review_skips s WHERE s.image_id = l.image_id AND s.moderator = %(m)s
                  AND s.skipped_at > now() - make_interval(secs => %(skip_s)s))
  AND (%(label)s::text IS NULL OR l.label = %(label)s)
  AND (%(since)s::date IS NULL OR l.scored_at >= %(since)s::date)
  AND (%(until)s::date IS NULL OR l.scored_at < %(until)s::date + 1)
  AND (%(exclude)s::text IS NULL OR l.image_id <> %(exclude)s)
ORDER BY (l.label = 'uncertain') DESC, abs(l.p_fake - l.threshold), l.scored_at DESC, l.image_id
LIMIT %(limit)s
"""


def queue(
    conn: Conn, moderator: str, filters: Filters, limit: int, skip_s: float, exclude: str | None = None
) -> list[QueueItem]:
    params = {
        "m": moderator,
        "mv": filters.model_version,
        "label": filters.label,
        "since": filters.since,
        "until": filters.until,
        "skip_s": skip_s,
        "limit": limit,
        "exclude": exclude,
    }
    with conn.cursor() as cur:
        cur.execute(QUEUE_SQL, params)
        return [QueueItem(*row) for row in cur.fetchall()]


def item(conn: Conn, moderator: str, image_id: str, model_version: str | None) -> Item | None:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT image_id, model_version, p_fake, label, threshold, scored_at, original_size,"
            " original_format, signals FROM verdicts"
            " WHERE image_id = %s AND (%s::text IS NULL OR model_version = %s)"
            " ORDER BY scored_at DESC LIMIT 1",
            (image_id, model_version, model_version),
        )
        row = cur.fetchone()
        if row is None:
            return None
        it = Item(QueueItem(*row[:6]), None, list(row[6]) if row[6] else None, row[7])
        it.reasons = signal_reasons(row[8])
        cur.execute("SELECT ref FROM images WHERE id = %s", (image_id,))
        ref = cur.fetchone()
        it.ref = ref[0] if ref else None
        cur.execute(
            "SELECT method, keys, evidence FROM explanations WHERE image_id = %s AND model_version = %s"
            " ORDER BY (method = 'gradcam') DESC, created_at DESC LIMIT 1",
            (image_id, it.verdict.model_version),
        )
        ex = cur.fetchone()
        if ex:
            it.method, it.keys, it.evidence = ex[0], dict(ex[1] or {}), dict(ex[2] or {})
        cur.execute(
            "SELECT label FROM feedback WHERE image_id = %s AND moderator = %s", (image_id, moderator)
        )
        mine = cur.fetchone()
        it.my_label = mine[0] if mine else None
    return it


def signal_reasons(raw: dict[str, Any] | None) -> list[str]:
    """The stored signals block in words; nothing for a block this build cannot read."""
    if not raw:
        return []
    try:
        return reasons(Signals.model_validate(raw))
    except ValidationError:
        return ["signals recorded in a newer format than this console reads"]


def explanation_keys(conn: Conn, image_id: str, model_version: str, method: str) -> dict[str, str]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT keys FROM explanations WHERE image_id = %s AND model_version = %s AND method = %s",
            (image_id, model_version, method),
        )
        row = cur.fetchone()
    return dict(row[0] or {}) if row else {}


def image_ref(conn: Conn, image_id: str) -> str | None:
    with conn.cursor() as cur:
        cur.execute("SELECT ref FROM images WHERE id = %s", (image_id,))
        row = cur.fetchone()
    return row[0] if row else None


UPSERT_FEEDBACK = """
INSERT INTO feedback (image_id, moderator, label, note, labelled_at) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (image_id, moderator)
DO UPDATE SET label = EXCLUDED.label, note = EXCLUDED.note, labelled_at = EXCLUDED.labelled_at
"""


def upsert_feedback(conn: Conn, fb: Feedback) -> None:
    """A moderator's later label for the same image replaces theirs (the row is keyed on both)."""
    with conn.cursor() as cur:
        cur.execute(UPSERT_FEEDBACK, (fb.image_id, fb.moderator, fb.label, fb.note or "", fb.labelled_at))
        cur.execute(
            "DELETE FROM review_skips WHERE image_id = %s AND moderator = %s", (fb.image_id, fb.moderator)
        )


def skip(conn: Conn, moderator: str, image_id: str) -> None:
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO review_skips (image_id, moderator) VALUES (%s, %s)"
            " ON CONFLICT (image_id, moderator) DO UPDATE SET skipped_at = now()",
            (image_id, moderator),
        )


def history(conn: Conn, moderator: str, limit: int) -> list[tuple[Any, ...]]:
    """(image_id, label, note, labelled_at, latest model_version, its p_fake, its label)."""
    with conn.cursor() as cur:
        cur.execute(
            """
            SELECT f.image_id, f.label, f.note, f.labelled_at, v.model_version, v.p_fake, v.label
            FROM feedback f
            LEFT JOIN LATERAL (
                SELECT model_version, p_fake, label FROM verdicts WHERE image_id = f.image_id
                ORDER BY scored_at DESC LIMIT 1
            ) v ON true
            WHERE f.moderator = %s ORDER BY f.labelled_at DESC LIMIT %s
            """,
            (moderator, limit),
        )
        return list(cur.fetchall())


def _jsonb(v: Any, empty: Any) -> Any:
    return json.loads(v) if isinstance(v, str) else (v if v is not None else empty)


def models(conn: Conn) -> list[dict[str, Any]]:
    """Every registered version, newest first (``ingest.api.model_view`` formats them)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT version, parent, status, metrics, trigger, created_at, data, reasons FROM models"
            " ORDER BY created_at DESC, version"
        )
        rows = cur.fetchall()
    return [
        {
            "version": r[0],
            "parent": r[1],
            "status": r[2],
            "metrics": _jsonb(r[3], {}),
            "trigger": r[4],
            "created_at": r[5],
            "data": _jsonb(r[6], {}),
            "reasons": _jsonb(r[7], []),
        }
        for r in rows
    ]


def model_versions(conn: Conn) -> list[str]:
    with conn.cursor() as cur:
        cur.execute("SELECT DISTINCT model_version FROM verdicts ORDER BY model_version")
        return [r[0] for r in cur.fetchall()]
