"""Moderator labels that act at once, on the real stack: a label puts the image's PDQ hash on a known-content
list, every running scorer applies it, and re-uploads (recompressed, resized, mirrored) are decided by the
match; a tie takes it off; an operator's CSV import acts the same way; declared-AI metadata decides too.

Each test runs in its own PostgreSQL schema with its own topics, so the real lists are never touched.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg2
import pytest
from PIL import Image

from harness.wait import wait_until
from ingest.contracts import Feedback, ImageSubmitted, encode, utcnow
from ingest.known_csv import CsvRow, csv_text, parse_csv
from ingest.metrics import new_registry
from ingest.settings import StackSettings
from ingest.signals import Signals
from retrainer.known import announce, export_csv, import_rows
from retrainer.service import run_feedback
from retrainer.settings import RetrainerSettings
from scorer.known_index import KnownIndex
from scorer.known_watcher import KnownContentWatcher
from scorer.pdq import dihedral, to_hex
from scorer.signals import SignalSettings
from tests.kafka_helpers import create_topics, delete_topics, produce
from tests.known_helpers import encode as encode_image
from tests.known_helpers import mirrored, picture, png_with_parameters, recompressed
from tests.scorer_helpers import ScorerThread, make_weights, scorer_settings, upload_images

pytestmark = pytest.mark.integration


@pytest.fixture
def side_topics(stack: StackSettings) -> Iterator[tuple[str, str]]:
    """(feedback topic, known-content topic) for one test."""
    tag = uuid.uuid4().hex[:8]
    fb, kt = f"test.feedback.{tag}", f"test.known.{tag}"
    create_topics(stack, {fb: 1, fb + ".dlq": 1, kt: 1})
    yield fb, kt
    delete_topics(stack, [fb, fb + ".dlq", kt])


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_weights(tmp_path_factory.mktemp("w") / "k.safetensors", f"test-k-{uuid.uuid4().hex[:6]}", 3)


def _query(stack: StackSettings, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(stack.pg.dsn.get_secret_value())
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())
    finally:
        conn.close()


class Flow:
    """Submit one image at a time to a running scorer and read its verdict back from PostgreSQL."""

    def __init__(self, stack: StackSettings, topic: str, fb_topic: str, kt: str) -> None:
        self.stack, self.topic, self.fb_topic, self.kt = stack, topic, fb_topic, kt
        self.fed = 0

    def score(self, image_id: str, data: bytes) -> tuple[str, float, Signals]:
        (key,) = upload_images(self.stack, [data])
        msg = ImageSubmitted(image_id=image_id, ref=f"s3://images/{key}", submitted_at=utcnow(), source="t")
        produce(self.stack, self.topic, [(image_id.encode(), encode(msg))])
        sql = "SELECT label, p_fake, signals FROM verdicts WHERE image_id = %s"
        wait_until(lambda: bool(_query(self.stack, sql, (image_id,))), 60, f"the verdict of {image_id}")
        label, p_fake, signals = _query(self.stack, sql, (image_id,))[0]
        return label, p_fake, Signals.model_validate(signals)

    def label(self, image_id: str, label: str, moderator: str) -> None:
        fb = Feedback(image_id=image_id, label=label, moderator=moderator, labelled_at=utcnow())  # type: ignore[arg-type]
        produce(self.stack, self.fb_topic, [(image_id.encode(), encode(fb))])
        self.fed += 1
        settings = RetrainerSettings(
            feedback_topic=self.fb_topic,
            known_topic=self.kt,
            group_id=f"fb-{uuid.uuid4().hex[:8]}",  # a new group reads the topic from the start: a replay
            metrics_port=None,
            max_wait_ms=50,
        )
        stats = run_feedback(self.stack, settings, max_records=self.fed, idle_timeout=30)
        assert stats.dead_lettered == 0


def test_a_label_catches_reuploads_within_seconds_and_a_tie_releases_them(
    iso: StackSettings, topic: str, group: str, side_topics: tuple[str, str], weights: Path
) -> None:
    fb_topic, kt = side_topics
    index = KnownIndex()
    settings = scorer_settings(topic, group, weights, signals=SignalSettings(known_topic=kt))
    scorer = ScorerThread(iso, settings, max_records=6, idle_timeout=90, known_index=index)
    flow = Flow(iso, topic, fb_topic, kt)
    pic = picture(7)
    tag = uuid.uuid4().hex[:6]

    label, _p, sig = flow.score(f"orig-{tag}", encode_image(pic, "JPEG", quality=90))
    assert sig.decided_by == "model" and sig.pdq is not None and sig.pdq.quality >= 50
    (stored_pdq,) = _query(iso, "SELECT pdq FROM images WHERE id = %s", (f"orig-{tag}",))[0]
    assert stored_pdq == sig.pdq.hash

    flow.label(f"orig-{tag}", "fake", "mod-a")
    wait_until(lambda: len(index) == 1, 30, "the label to reach the scorer's index")

    for name, data in (("recompressed", recompressed(pic)), ("mirrored", mirrored(pic))):
        label, p_fake, sig = flow.score(f"{name}-{tag}", data)
        assert label == "fake" and sig.decided_by == "known_content", name
        assert sig.known is not None and sig.known.image_id == f"orig-{tag}" and sig.known.distance <= 31
        assert sig.known.moderators == 1 and 0.0 <= p_fake <= 1.0

    # A second moderator disagrees: a tie has no majority, so the entry leaves the lists at once.
    flow.label(f"orig-{tag}", "real", "mod-b")
    wait_until(lambda: len(index) == 0, 30, "the tie to reach the scorer's index")
    (active,) = _query(iso, "SELECT active FROM known_content WHERE image_id = %s", (f"orig-{tag}",))[0]
    assert active is False
    _label, _p, sig = flow.score(f"after-tie-{tag}", recompressed(pic, size=48, quality=60))
    assert sig.decided_by == "model" and sig.known is None

    # An operator's CSV import acts the same way, whatever generator made the image.
    other = picture(8)
    arr = np.asarray(Image.open(io.BytesIO(encode_image(other, "PNG"))).convert("RGB"))
    conn = psycopg2.connect(iso.pg.dsn.get_secret_value())
    try:
        with conn, conn.cursor() as cur:
            updates = import_rows(cur, [CsvRow(to_hex(dihedral(arr)[0][0]), "fake", "shared list")])
    finally:
        conn.close()
    produce(iso, kt, announce(updates))
    wait_until(lambda: len(index) == 1, 30, "the import to reach the scorer's index")
    _label, _p, sig = flow.score(f"imported-{tag}", recompressed(other, size=96))
    assert sig.decided_by == "known_content" and sig.known is not None and sig.known.source == "import"

    # Metadata that declares a generator decides too (no list involved).
    label, _p, sig = flow.score(f"declared-{tag}", png_with_parameters(picture(9)))
    assert label == "fake" and sig.decided_by == "provenance"
    assert sig.provenance is not None and sig.provenance.declared_ai
    assert scorer.join().processed == 6


def test_a_starting_scorer_loads_the_lists_before_it_scores(
    iso: StackSettings, side_topics: tuple[str, str]
) -> None:
    _fb, kt = side_topics
    rows = [CsvRow(f"{i:064x}", "fake" if i % 2 else "real", f"row {i}") for i in range(1, 41)]
    conn = psycopg2.connect(iso.pg.dsn.get_secret_value())
    try:
        with conn, conn.cursor() as cur:
            import_rows(cur, rows)
            cur.execute("UPDATE known_content SET active = false WHERE pdq = %s", (rows[0].pdq,))
    finally:
        conn.close()
    index = KnownIndex()
    watcher = KnownContentWatcher(iso.kafka, iso.pg, index, new_registry(), topic=kt)
    watcher.start()
    try:
        assert watcher.wait_ready(30)
        assert len(index) == 39  # the inactive row is not loaded
    finally:
        watcher.stop()


def test_export_then_import_round_trips_a_list(iso: StackSettings) -> None:
    rows = [CsvRow(f"{i:064x}", "fake", f"note {i}, with a comma") for i in range(1, 6)]
    parsed = parse_csv(io.StringIO(csv_text(rows)))
    assert parsed == rows
    conn = psycopg2.connect(iso.pg.dsn.get_secret_value())
    try:
        with conn, conn.cursor() as cur:
            first = import_rows(cur, parsed)
            again = import_rows(cur, parsed)  # idempotent: same entries, nothing new
            out = io.StringIO()
            n = export_csv(cur, out, "fake")
    finally:
        conn.close()
    assert [u.entry_id for u in first] == [u.entry_id for u in again]
    assert n == 5 and parse_csv(io.StringIO(out.getvalue())) == rows


@pytest.mark.parametrize(
    "text, problem",
    [
        ("hash,label\n" + "0" * 64 + ",fake\n", "missing: pdq"),
        ("pdq,label\nxyz,fake\n", "line 2: pdq must be 64 hex digits"),
        ("pdq,label\n" + "0" * 64 + ",maybe\n", "line 2: label must be real or fake"),
    ],
)
def test_a_bad_csv_names_its_problem_and_imports_nothing(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_csv(io.StringIO(text))
