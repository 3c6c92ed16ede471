"""Records compressed with every codec Kafka offers are all scored by the real scorer (the unit checks:
tests/unit/test_codecs.py)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from ingest.contracts import ImageSubmitted, encode, utcnow
from ingest.kafka import make_producer
from ingest.settings import StackSettings
from scorer.service import run_scorer
from tests.kafka_helpers import end_offsets
from tests.scorer_helpers import jpeg, make_weights, scorer_settings, upload_images, verdict_rows
from tests.unit.test_codecs import CODECS


@pytest.mark.integration
def test_records_from_producers_using_every_codec_are_all_scored(
    stack: StackSettings, topic: str, group: str, tmp_path: Path
) -> None:
    per_codec = 8
    keys = upload_images(stack, [jpeg(9000 + i) for i in range(per_codec)])
    tag = uuid.uuid4().hex[:8]
    ids = []
    for codec in CODECS:
        producer = make_producer(stack.kafka, compression_type=codec, linger_ms=20)
        try:
            for i, key in enumerate(keys):
                image_id = f"codec-{tag}-{codec or 'none'}-{i}"
                msg = ImageSubmitted(
                    image_id=image_id, ref=f"s3://images/{key}", submitted_at=utcnow(), source="t"
                )
                producer.send(topic, key=image_id.encode(), value=encode(msg))
                ids.append(image_id)
            producer.flush(timeout=30)
        finally:
            producer.close()
    weights = make_weights(tmp_path / "w.safetensors", f"test-codec-{tag}", seed=5)
    stats = run_scorer(stack, scorer_settings(topic, group, weights), max_records=len(ids), idle_timeout=60)
    assert stats.processed == len(ids) and stats.dead_lettered == 0
    assert sorted(r[0] for r in verdict_rows(stack, ids)) == sorted(ids)
    assert sum(end_offsets(stack, topic + ".dlq").values()) == 0
