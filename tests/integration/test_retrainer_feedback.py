"""The feedback consumer on the real stack: rows per moderator, later label wins, majority rule, DLQ reasons,
replays change nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Literal

import pytest

from ingest.contracts import DeadLetter, Feedback, decode, encode
from ingest.db import connect
from ingest.settings import StackSettings
from retrainer.feedback import majority_labels
from retrainer.service import run_feedback
from retrainer.settings import RetrainerSettings
from tests.kafka_helpers import committed, produce, read_all
from tests.retrainer_helpers import insert_images

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def fb(image: str, label: Literal["real", "fake"], moderator: str, minutes: int) -> tuple[bytes, bytes]:
    msg = Feedback(
        image_id=image, label=label, moderator=moderator, labelled_at=T0 + timedelta(minutes=minutes)
    )
    return image.encode(), encode(msg)


def feedback_rows(stack: StackSettings) -> list[tuple[str, str, str, datetime]]:
    with connect(stack.pg) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT image_id, moderator, label, received_at FROM feedback ORDER BY image_id, moderator"
        )
        return list(cur.fetchall())


def test_feedback_rows_majority_dlq_and_replay(iso: StackSettings, topic: str, group: str) -> None:
    insert_images(iso, ["img-1", "img-2", "img-3"])
    good = [
        fb("img-1", "fake", "alice", 1),
        fb("img-1", "fake", "bob", 1),
        fb("img-1", "real", "carol", 1),
        fb("img-2", "real", "alice", 1),
        fb("img-2", "fake", "bob", 1),
        fb("img-3", "real", "alice", 1),
        fb("img-3", "fake", "alice", 5),  # alice changes her mind: later label wins
        fb("img-3", "real", "alice", 3),  # an older label arriving late changes nothing
    ]
    unknown_label = json.dumps(
        {"image_id": "img-1", "label": "maybe", "moderator": "dave", "labelled_at": T0.isoformat()}
    ).encode()
    bad = [
        fb("img-404", "fake", "alice", 1),
        (b"img-1", unknown_label),
        (b"img-1", b"{not json"),
        (b"img-2", json.dumps({"image_id": "img-2", "label": "fake"}).encode()),
    ]
    produce(iso, topic, good + bad)
    settings = RetrainerSettings(feedback_topic=topic, group_id=group, metrics_port=None, max_wait_ms=50)
    stats = run_feedback(iso, settings, max_records=len(good) + len(bad), idle_timeout=30)
    assert (stats.processed, stats.dead_lettered) == (len(good), len(bad))

    rows = feedback_rows(iso)
    assert [(i, m, lab) for i, m, lab, _ in rows] == [
        ("img-1", "alice", "fake"),
        ("img-1", "bob", "fake"),
        ("img-1", "carol", "real"),
        ("img-2", "alice", "real"),
        ("img-2", "bob", "fake"),
        ("img-3", "alice", "fake"),
    ]
    majority = majority_labels(iso.pg)
    assert majority.labels == {"img-1": 1, "img-3": 1}
    assert majority.ties == 1
    assert majority.agreement == 0.0  # both multi-moderator images had a dissent

    letters = [decode(DeadLetter, v) for *_x, v in read_all(iso, topic + ".dlq", len(bad), timeout=15)]
    assert sorted(d.code for d in letters) == [
        "invalid_message",
        "invalid_message",
        "unknown_image",
        "unknown_label",
    ]
    assert all(d.topic == topic and d.reason for d in letters)
    assert sum(committed(iso, group, topic).values()) == len(good) + len(bad)

    # A replay from the beginning (new group) changes nothing, not even received_at.
    replay = RetrainerSettings(
        feedback_topic=topic, group_id=group + "-replay", metrics_port=None, max_wait_ms=50
    )
    run_feedback(iso, replay, max_records=len(good) + len(bad), idle_timeout=30)
    assert feedback_rows(iso) == rows
