"""A round trip through every piece of the stack: object store, Kafka, the shared loop, PostgreSQL.

``python -m ingest smoke`` stores a generated image in the ``images`` bucket under its content
hash, publishes an ``ImageSubmitted`` reference, consumes it back through ``ConsumerLoop`` in a
private consumer group, re-reads the object and upserts the ``images`` row. It is what
``make demo`` runs until the scorer exists, and a quick health check for a deployment.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
import uuid

from PIL import Image

from ingest.contracts import ImageSubmitted, decode, encode, parse_s3_ref, utcnow
from ingest.db import transaction
from ingest.kafka import make_consumer, make_producer
from ingest.loop import Batch, ConsumerLoop, LoopConfig
from ingest.settings import StackSettings
from ingest.storage import S3Store
from ingest.topics import IMAGES_SUBMITTED

logger = logging.getLogger(__name__)

UPSERT_IMAGE = """
INSERT INTO images (id, ref, sha256, source, submitted_at, metadata)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (id) DO NOTHING
"""


def _sample_png(seed: int) -> bytes:
    img = Image.new("RGB", (32, 32), ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def run_smoke(stack: StackSettings, timeout_s: float = 60.0) -> dict[str, object]:
    started = time.monotonic()
    store = S3Store(stack.s3)
    data = _sample_png(uuid.uuid4().int % 1000)
    digest = hashlib.sha256(data).hexdigest()
    store.put("images", digest, data, "image/png")
    msg = ImageSubmitted(
        image_id=digest,
        ref=f"s3://images/{digest}",
        submitted_at=utcnow(),
        source="smoke",
        metadata={"demo": "1"},
    )

    # A private group that starts at the end of the topic, so the smoke test never touches
    # other consumers' offsets nor re-reads history.
    group = f"smoke-{uuid.uuid4().hex[:12]}"
    consumer = make_consumer(stack.kafka, group, [IMAGES_SUBMITTED], auto_offset_reset="latest")
    # Join the group before publishing, otherwise "latest" could skip our own record.
    deadline = time.monotonic() + timeout_s
    while not consumer.assignment() and time.monotonic() < deadline:
        consumer.poll(timeout_ms=200)
    for tp in consumer.assignment():
        consumer.position(tp)  # resolves "latest" now, before our record exists
    producer = make_producer(stack.kafka)
    producer.send(IMAGES_SUBMITTED, key=digest.encode(), value=encode(msg)).get(timeout=30)

    found: dict[str, object] = {}
    loop: ConsumerLoop

    def handle(batch: Batch) -> None:
        with transaction(stack.pg) as cur:
            for record in batch.pending():
                if record.key != digest.encode():
                    continue  # someone else's image: not ours to judge
                got = decode(ImageSubmitted, record.value)
                assert got.ref is not None
                bucket, key = parse_s3_ref(got.ref)
                body = store.get(bucket, key, max_bytes=10_000_000)
                cur.execute(
                    UPSERT_IMAGE,
                    (
                        got.image_id,
                        got.ref,
                        hashlib.sha256(body).hexdigest(),
                        got.source,
                        got.submitted_at,
                        json.dumps(got.metadata),
                    ),
                )
                found.update(image_id=got.image_id, offset=record.offset, partition=record.partition)
        if found:
            loop.stop()

    loop = ConsumerLoop(consumer, producer, handle, LoopConfig(service="smoke", max_batch=64))
    loop.run(idle_timeout=timeout_s)
    if not found:
        raise RuntimeError(f"smoke: our record did not come back within {timeout_s:.0f}s")
    with transaction(stack.pg) as cur:
        cur.execute("SELECT sha256 FROM images WHERE id = %s", (digest,))
        row = cur.fetchone()
    if row is None or row[0] != digest:
        raise RuntimeError("smoke: the images row is missing or has the wrong hash")
    return {**found, "bucket": "images", "bytes": len(data), "seconds": round(time.monotonic() - started, 2)}
