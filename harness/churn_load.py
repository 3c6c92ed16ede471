"""The load ``harness.churn`` puts on the scorers: the input topic, fresh images in MinIO and their
references published to the topic at a steady rate."""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from kafka import KafkaProducer
from PIL import Image

from harness.topics import create_topics
from ingest.contracts import ImageSubmitted, encode, utcnow
from ingest.kafka import make_admin, make_producer
from ingest.settings import StackSettings
from ingest.storage import S3Store
from ingest.topics import IMAGES_SUBMITTED, dlq_topic

logger = logging.getLogger(__name__)

BUCKET = "images"
ACK_TIMEOUT_S = 60.0


@contextlib.contextmanager
def input_topic(stack: StackSettings, topic: str | None, run_id: str) -> Iterator[str]:
    """The topic the scorers read: ``topic``, or when None a private one (and its .dlq) deleted afterwards,
    with as many partitions and replicas as ``images.submitted``."""
    if topic:
        yield topic
        return
    admin = make_admin(stack.kafka)
    try:
        (shared,) = admin.describe_topics([IMAGES_SUBMITTED])
        partitions = len(shared["partitions"])
        replicas = len(shared["partitions"][0]["replica_nodes"])
        name = f"churn.{run_id}.submitted"
        names = [name, dlq_topic(name)]
        create_topics(stack.kafka, dict.fromkeys(names, partitions), replicas)
        try:
            yield name
        finally:
            admin.delete_topics(names)
    finally:
        admin.close()


def delete_group(stack: StackSettings, group: str) -> None:
    admin = make_admin(stack.kafka)
    try:
        admin.delete_groups([group])
    except Exception as e:  # a killed member's session may linger; an empty group is harmless
        logger.warning("could not delete group %s: %s: %s", group, type(e).__name__, e)
    finally:
        admin.close()


def noise_pngs(n: int, seed: int) -> list[bytes]:
    """``n`` distinct 32x32 noise PNGs; a fresh seed per run gives fresh sha256 ids (the caller checks)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def upload(stack: StackSettings, images: list[bytes]) -> list[str]:
    """Store each image under its sha256 in ``images`` (the intake's naming); returns the ids in order."""
    store = S3Store(stack.s3)
    ids = [hashlib.sha256(b).hexdigest() for b in images]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: store.put(BUCKET, kv[0], kv[1], "image/png"), zip(ids, images, strict=True)))
    return ids


class Publisher:
    """Publishes one ``ImageSubmitted`` reference per id to ``topic``, ``rate`` per second, on a thread.

    An id counts as submitted once Kafka acknowledged it. The stack is healthy in this run, so a send that
    is not acknowledged is an error of the run (``join`` raises it), not something to retry around.
    """

    def __init__(self, stack: StackSettings, topic: str, ids: list[str], rate: float, source: str) -> None:
        self.stack, self.topic, self.ids, self.rate, self.source = stack, topic, ids, rate, source
        self.acked = 0
        self.error: BaseException | None = None
        self.finished_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._stop.set()
            raise TimeoutError("the publisher did not finish")
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        producer = make_producer(self.stack.kafka)
        try:
            self._publish(producer)
        except BaseException as e:  # surfaced by join()
            self.error = e
        finally:
            producer.close(timeout=30)
            self.finished_at = time.monotonic()

    def _publish(self, producer: KafkaProducer) -> None:
        t0 = time.monotonic()
        pending: list[Any] = []  # kafka-python's FutureRecordMetadata
        for i, image_id in enumerate(self.ids):
            delay = t0 + i / self.rate - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            msg = ImageSubmitted(
                image_id=image_id, ref=f"s3://{BUCKET}/{image_id}", submitted_at=utcnow(), source=self.source
            )
            pending.append(producer.send(self.topic, key=image_id.encode(), value=encode(msg)))
            if len(pending) >= 50:
                self._settle(pending)
        self._settle(pending)

    def _settle(self, pending: list[Any]) -> None:
        for f in pending:
            f.get(timeout=ACK_TIMEOUT_S)
            self.acked += 1
        pending.clear()
