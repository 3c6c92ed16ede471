"""The ``images.submitted`` bad-input corpus (``tests/badinput/submitted.py``) through one streaming
scorer: each case ends as a verdict or a dead letter with its reason code, and the scorer keeps consuming
afterwards."""

from __future__ import annotations

import base64
import hashlib
import io
import uuid
from pathlib import Path

import pytest
from PIL import Image

from ingest.contracts import DeadLetter, ImageSubmitted, decode, encode, utcnow
from ingest.loop import MAX_DEAD_LETTER_PAYLOAD
from ingest.settings import StackSettings
from ingest.storage import S3Store
from tests.badinput.submitted import CASES, IMAGE_CASES, MAX_BYTES, MESSAGE_CASES, SubmittedCase, one_px
from tests.kafka_helpers import committed, produce, read_all
from tests.scorer_helpers import ScorerThread, jpeg, make_weights, scorer_settings, verdict_rows

pytestmark = pytest.mark.integration


def _record(store: S3Store, case: SubmittedCase, image_id: str) -> bytes | None:
    if case.raw is not None:
        return case.raw(image_id)
    ref, inline = case.ref, None
    if case.image is not None:
        data = case.image()
        key = f"tests/{hashlib.sha256(data).hexdigest()}"
        store.put("images", key, data)
        ref = f"s3://images/{key}"
    if case.inline is not None:
        inline = base64.b64encode(case.inline()).decode()
    msg = ImageSubmitted(image_id=image_id, ref=ref, inline=inline, submitted_at=utcnow(), source="test")
    return encode(msg)


def test_table_covers_the_families() -> None:
    assert len(MESSAGE_CASES) >= 20 and len(IMAGE_CASES) >= 20
    assert len({c.name for c in CASES}) == len(CASES)
    assert {c.expect for c in CASES} >= {"verdict", "invalid_message", "too_many_pixels", "truncated"}


def test_bad_input_table_through_the_streaming_scorer(
    stack: StackSettings, topic: str, group: str, tmp_path: Path
) -> None:
    store = S3Store(stack.s3)
    weights = make_weights(tmp_path / "w.safetensors", f"test-bad-{uuid.uuid4().hex[:6]}", seed=3)
    run = uuid.uuid4().hex[:8]
    ids = [f"bad-{run}-{i}" for i in range(len(CASES))]
    produce(stack, topic, [(i.encode(), _record(store, c, i)) for i, c in zip(ids, CASES, strict=True)])
    # One good record after all the bad ones: the scorer must still be consuming.
    tail_id = f"bad-{run}-tail"
    tail_key = f"tests/{hashlib.sha256(jpeg(99)).hexdigest()}"
    store.put("images", tail_key, jpeg(99))
    tail = ImageSubmitted(image_id=tail_id, ref=f"s3://images/{tail_key}", submitted_at=utcnow(), source="t")
    produce(stack, topic, [(tail_id.encode(), encode(tail))])

    settings = scorer_settings(
        topic, group, weights, limits={"max_bytes": MAX_BYTES}, fetch={"max_bytes": MAX_BYTES}
    )
    # On a thread with a deadline: a record that blocks its partition must fail the test, not hang it.
    stats = ScorerThread(stack, settings, max_records=len(CASES) + 1, idle_timeout=60).join(timeout=300)

    expected_dead = [c for c in CASES if c.expect != "verdict"]
    letters = [decode(DeadLetter, v) for *_, v in read_all(stack, topic + ".dlq", expect=len(expected_dead))]
    by_key = {base64.b64decode(dl.key_b64 or "").decode(): dl for dl in letters}
    verdicts = {r[0] for r in verdict_rows(stack, [*ids, tail_id])}
    outcomes = {}
    for image_id, case in zip(ids, CASES, strict=True):
        if image_id in verdicts:
            outcomes[case.name] = "verdict"
        elif image_id in by_key:
            outcomes[case.name] = by_key[image_id].code
        else:
            outcomes[case.name] = "lost"
    assert outcomes == {c.name: c.expect for c in CASES}
    assert tail_id in verdicts
    assert stats.dead_lettered == len(expected_dead) and len(letters) == len(expected_dead)
    assert sum(committed(stack, group, topic).values()) == len(CASES) + 1, "every record must be committed"
    case_of = dict(zip(ids, CASES, strict=True))
    for key, dl in by_key.items():  # every dead letter carries the original payload and a readable reason
        assert dl.reason and dl.topic == topic
        assert dl.payload() or case_of[key].name == "tombstone"
        if len(dl.payload()) == MAX_DEAD_LETTER_PAYLOAD:  # too big to dead-letter whole: its head, and why
            assert case_of[key].name.startswith("oversized record") and "payload truncated" in dl.reason

    # An inline image is kept under its hash, so reviewers and the explainer can see it later.
    stored = store.get("images", hashlib.sha256(one_px()).hexdigest(), 10_000)
    assert Image.open(io.BytesIO(stored)).size == (1, 1)
