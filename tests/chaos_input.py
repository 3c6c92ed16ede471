"""The chaos run's input: good and bad submissions (``build_corpus``) and the publisher that sends them in
chunks, resending what Kafka did not acknowledge (``Publisher``). See ``tests/chaos.py``."""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from dataclasses import dataclass

from kafka import KafkaProducer

from harness.bench_inputs import reference_message, upload
from harness.demo_samples import generated_images
from ingest.contracts import encode
from ingest.kafka import make_producer
from ingest.settings import StackSettings
from ingest.storage import S3Store
from tests.imagegen import noise, png_bomb, save

logger = logging.getLogger("chaos")

MAX_ATTEMPTS = 60  # resends of one chunk (backoff capped at 5 s): minutes, longer than any fault here


@dataclass(frozen=True)
class Submission:
    image_id: str
    value: bytes  # the images.submitted record
    expect: str  # "verdict", or the dead-letter reason code


def _bad_object(kind: str, i: int) -> bytes:
    if kind == "text":
        return f"chaos {i}: these are text bytes, not an image\n".encode() * 10
    if kind == "truncated":
        return save(noise(200, 200, seed=i), "JPEG", quality=90)[:1500]
    if kind == "empty":
        return b""
    if kind == "pixel_bomb":
        return png_bomb()
    if kind == "tiff":
        return save(noise(16, 16, seed=i), "TIFF")
    raise ValueError(kind)


# kind -> the dead-letter code the scorer must give it
BAD_KINDS = {
    "missing_object": "missing_object",
    "text": "not_an_image",
    "truncated": "truncated",
    "invalid_json": "invalid_message",
    "unknown_schema": "invalid_message",
    "empty": "empty",
    "bucket_not_allowed": "bucket_not_allowed",
    "pixel_bomb": "too_many_pixels",
    "tiff": "format_not_allowed",
}


def build_corpus(store: S3Store, run: str, n: int, bad: int, seed: int) -> list[Submission]:
    """``n`` submissions (``bad`` of them bad, spread at random positions); their objects are uploaded."""
    images = generated_images(n - bad, seed)
    keys = upload(store, images)  # key = sha256 = image id
    subs = [Submission(k, encode(reference_message(k, k, "chaos")), "verdict") for k in keys]
    kinds = list(BAD_KINDS)
    for i in range(bad):
        kind = kinds[i % len(kinds)]
        image_id = f"chaos-{run}-bad-{i}-{kind.replace('_', '-')}"
        if kind == "invalid_json":
            value = b'{"image_id": "' + image_id.encode() + b'", "ref": '
        elif kind == "unknown_schema":
            doc = json.loads(reference_message(image_id, f"chaos-{run}/x", "chaos").model_dump_json())
            value = json.dumps({**doc, "schema_version": 9}).encode()
        elif kind == "missing_object":
            value = encode(reference_message(image_id, f"chaos-{run}/missing-{i}", "chaos"))
        elif kind == "bucket_not_allowed":
            value = encode(reference_message(image_id, f"chaos-{run}-{i}", "chaos", bucket="models"))
        else:
            key = f"chaos-{run}/{kind}-{i}"
            store.put("images", key, _bad_object(kind, i))
            value = encode(reference_message(image_id, key, "chaos"))
        subs.append(Submission(image_id, value, BAD_KINDS[kind]))
    random.Random(seed).shuffle(subs)
    return subs


class Publisher:
    """Publishes chunk *i* at ``rate``/s once ``release(i)`` was called (chunk 0 at once). An image counts as
    submitted when Kafka acknowledged it; a failed or unacknowledged publish is retried with a new producer,
    so the same record may land twice (which the pipeline must absorb)."""

    def __init__(self, stack: StackSettings, topic: str, chunks: list[list[Submission]], rate: float) -> None:
        self.stack, self.topic, self.chunks, self.rate = stack, topic, chunks, rate
        self.acked: set[str] = set()
        self.resent = 0
        self.error: BaseException | None = None
        self._go = [threading.Event() for _ in chunks]
        self.done = [threading.Event() for _ in chunks]
        self._go[0].set()
        self._pause = threading.Event()
        self._producer: KafkaProducer | None = make_producer(stack.kafka, linger_ms=10)
        self._thread = threading.Thread(target=self._run, daemon=True, name="chaos-publisher")
        self._thread.start()

    def release(self, i: int) -> None:
        if i < len(self._go):
            self._go[i].set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the publisher did not finish")
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            for go, done, chunk in zip(self._go, self.done, self.chunks, strict=True):
                go.wait()
                self._publish(chunk)
                done.set()
        except BaseException as e:  # surfaced by join()
            self.error = e
            for d in self.done:
                d.set()
        finally:
            self._close_producer()

    def _close_producer(self) -> None:
        # Closing flushes: with the broker gone that times out. What it still holds may reach Kafka later
        # and duplicate a resent record, which is a case the run exists to test.
        if self._producer is not None:
            with contextlib.suppress(Exception):
                self._producer.close(timeout=1)
        self._producer = None

    def _publish(self, chunk: list[Submission]) -> None:
        pending, attempt = chunk, 0
        while pending:
            if attempt:
                self._pause.wait(min(5.0, 0.5 * 2**attempt))
            if self._producer is None:
                try:  # with the broker down even creating a producer fails (it cannot bootstrap)
                    self._producer = make_producer(self.stack.kafka, linger_ms=10)
                except Exception as e:
                    attempt += 1
                    if attempt > MAX_ATTEMPTS:
                        raise
                    logger.warning("publish: no producer (%s: %s); retrying", type(e).__name__, e)
                    continue
            left = self._pass(self._producer, pending)
            if left:
                attempt += 1
                if attempt > MAX_ATTEMPTS:
                    raise TimeoutError(f"{len(left)} records not acknowledged after {MAX_ATTEMPTS} attempts")
                self.resent += len(left)
                logger.warning("publish: %d not acknowledged (attempt %d); resending", len(left), attempt)
                self._close_producer()
            pending = left

    def _pass(self, producer: KafkaProducer, subs: list[Submission]) -> list[Submission]:
        """One paced pass; returns what must be sent again (from the first failure on, in order)."""
        t0 = time.monotonic()
        for start in range(0, len(subs), 50):
            group = subs[start : start + 50]
            futures = []
            for k, s in enumerate(group):
                delay = t0 + (start + k) / self.rate - time.monotonic()
                if delay > 0:
                    self._pause.wait(delay)
                try:
                    futures.append(producer.send(self.topic, key=s.image_id.encode(), value=s.value))
                except Exception as e:
                    logger.warning("publish: send failed: %s: %s", type(e).__name__, e)
                    return subs[start:]
            for k, f in enumerate(futures):
                try:
                    f.get(timeout=60)
                except Exception as e:
                    logger.warning("publish: not acknowledged: %s: %s", type(e).__name__, e)
                    return subs[start + k :]
                self.acked.add(group[k].image_id)
        return []
