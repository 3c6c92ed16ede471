"""The ``moderation.feedback`` bad-input corpus (``tests/badinput/feedback.py``) through one feedback
consumer: every case is stored or dead-lettered with its reason code, SQL-looking text is stored as text,
and the consumer keeps consuming afterwards."""

from __future__ import annotations

import base64
import threading
import uuid

import pytest

from ingest.contracts import DeadLetter, decode
from ingest.db import connect
from ingest.loop import RunStats
from ingest.settings import StackSettings
from retrainer.service import run_feedback
from retrainer.settings import RetrainerSettings
from tests.badinput.feedback import CASES, EXPECTED_ROWS, KNOWN_IMAGES, fb
from tests.kafka_helpers import committed, produce, read_all
from tests.retrainer_helpers import insert_images

pytestmark = pytest.mark.integration


def _rows(stack: StackSettings) -> list[tuple[str, str, str, str]]:
    with connect(stack.pg) as conn, conn.cursor() as cur:
        cur.execute("SELECT image_id, moderator, label, note FROM feedback ORDER BY image_id, label, note")
        rows = [(r[0], r[1], r[2], r[3] or "") for r in cur.fetchall()]
    conn.close()
    return rows


def test_feedback_corpus_through_one_consumer(iso: StackSettings, topic: str, group: str) -> None:
    assert len(CASES) >= 20 and len({c.name for c in CASES}) == len(CASES)
    insert_images(iso, [*KNOWN_IMAGES, "fb-img-tail"])
    run = uuid.uuid4().hex[:8]
    keys = [f"{run}-{i}" for i in range(len(CASES))]
    produce(iso, topic, [(k.encode(), c.value()) for k, c in zip(keys, CASES, strict=True)])
    # A good record after all the bad ones: the consumer must still be consuming.
    produce(iso, topic, [(b"tail", fb(image_id="fb-img-tail", moderator="tail")())])
    settings = RetrainerSettings(feedback_topic=topic, group_id=group, metrics_port=None, max_wait_ms=50)
    # On a daemon thread with a deadline: a record that blocks its partition must fail the test, not hang it.
    done: list[RunStats] = []
    consumer = threading.Thread(
        target=lambda: done.append(run_feedback(iso, settings, max_records=len(CASES) + 1, idle_timeout=30)),
        daemon=True,
    )
    consumer.start()
    consumer.join(timeout=300)
    assert done, "the feedback consumer did not finish: a record blocked its partition"
    stats = done[0]

    dead = [c for c in CASES if c.expect != "stored"]
    letters = [decode(DeadLetter, v) for *_x, v in read_all(iso, topic + ".dlq", len(dead), timeout=15)]
    by_key = {base64.b64decode(d.key_b64 or "").decode(): d for d in letters}
    outcomes = {c.name: by_key[k].code if k in by_key else "stored" for k, c in zip(keys, CASES, strict=True)}
    assert outcomes == {c.name: c.expect for c in CASES}
    assert (stats.processed, stats.dead_lettered) == (len(CASES) + 1 - len(dead), len(dead))
    assert all(d.topic == topic and d.reason for d in letters)
    assert sum(committed(iso, group, topic).values()) == len(CASES) + 1

    # The later label won; SQL-looking text went in as text (the table is still there to be read).
    rows = _rows(iso)
    assert sorted(r for r in rows if r[0] != "fb-img-tail") == sorted(EXPECTED_ROWS)
    assert ("fb-img-tail", "tail", "fake", "") in rows
