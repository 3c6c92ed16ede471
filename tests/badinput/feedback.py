"""Records on ``moderation.feedback``, each with its outcome in the feedback consumer.

``expect`` is ``"stored"`` (the record is consumed without a dead letter) or the dead-letter reason code.
``KNOWN_IMAGES`` must have ``images`` rows before the run. ``EXPECTED_ROWS`` is the ``feedback`` table
afterwards: a later label wins over an older one that arrives after it, and text that looks like SQL is
stored as text.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

KNOWN_IMAGES = ["fb-img-1", "fb-img-2"]
INJECTION = "mallory'); DROP TABLE feedback; --"


@dataclass(frozen=True)
class FeedbackCase:
    name: str
    expect: str  # "stored" or the dead-letter reason code
    value: Callable[[], bytes | None]


_DROP = object()


def fb(**over: Any) -> Callable[[], bytes]:
    """A feedback message that is valid except for ``over`` (``_DROP`` removes a field)."""
    doc: dict[str, Any] = {
        "schema_version": 1,
        "image_id": "fb-img-1",
        "label": "fake",
        "moderator": "alice",
        "labelled_at": "2026-11-01T12:05:00Z",
    }
    doc.update(over)
    body = json.dumps({k: v for k, v in doc.items() if v is not _DROP}).encode()
    return lambda: body


def raw(value: bytes | None) -> Callable[[], bytes | None]:
    return lambda: value


CASES = [
    FeedbackCase("valid label", "stored", fb()),
    FeedbackCase("older label arriving late", "stored", fb(label="real", labelled_at="2026-11-01T12:01:00Z")),
    FeedbackCase("moderator name that looks like sql", "stored", fb(moderator=INJECTION, note="x'; --")),
    FeedbackCase(
        "unicode moderator and note", "stored", fb(image_id="fb-img-2", moderator="モデレーター", note="✓")
    ),
    FeedbackCase("unknown image", "unknown_image", fb(image_id="fb-img-404")),
    FeedbackCase("label maybe", "unknown_label", fb(label="maybe")),
    FeedbackCase("label in capitals", "unknown_label", fb(label="FAKE")),
    FeedbackCase("empty label", "unknown_label", fb(label="")),
    FeedbackCase("label as a number", "unknown_label", fb(label=1)),
    FeedbackCase("label null", "unknown_label", fb(label=None)),
    FeedbackCase("label missing", "invalid_message", fb(label=_DROP)),
    FeedbackCase("invalid json", "invalid_message", raw(b'{"image_id": "fb-img-1", "label": ')),
    FeedbackCase("unknown schema_version", "invalid_message", fb(schema_version=2)),
    FeedbackCase("unknown extra field", "invalid_message", fb(weight=10)),
    FeedbackCase("timestamp without a zone", "invalid_message", fb(labelled_at="2026-11-01T12:00:00")),
    FeedbackCase("empty moderator", "invalid_message", fb(moderator="")),
    FeedbackCase("moderator too long", "invalid_message", fb(moderator="m" * 129)),
    FeedbackCase("note too long", "invalid_message", fb(note="n" * 2001)),
    FeedbackCase("image_id with path steps", "invalid_message", fb(image_id="../fb-img-1")),
    FeedbackCase("nul in the note", "invalid_message", fb(note="a\x00b")),
    FeedbackCase("nul in the moderator", "invalid_message", fb(moderator="bob\x00")),
    FeedbackCase("tombstone", "invalid_message", raw(None)),
    FeedbackCase("not utf-8", "invalid_message", raw(b"\xff\xfe\x80")),
    FeedbackCase("json array", "invalid_message", raw(b'[{"label": "fake"}]')),
]

# (image_id, moderator, label, note) in the feedback table after the run.
EXPECTED_ROWS = [
    ("fb-img-1", "alice", "fake", ""),
    ("fb-img-1", INJECTION, "fake", "x'; --"),
    ("fb-img-2", "モデレーター", "fake", "✓"),
]
