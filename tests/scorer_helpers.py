"""Helpers for the scorer's integration tests: a small weights file, images, publishing, reading back."""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from kafka import KafkaConsumer, TopicPartition
from PIL import Image

from ingest.contracts import ImageSubmitted, Verdict, decode, encode, utcnow
from ingest.db import connect
from ingest.decode import DecodeLimits
from ingest.fetch import Fetcher
from ingest.loop import Batch, Record, RunStats
from ingest.metrics import new_registry
from ingest.settings import StackSettings
from ingest.storage import S3Store
from ingest.topics import IMAGES_VERDICTS
from scorer.engine import ServingModel
from scorer.handler import ScoreHandler, ScorerMetrics
from scorer.models import create_model, list_models
from scorer.service import ScorerSettings, run_scorer
from scorer.sink import ImageRow
from scorer.weights import ModelMeta, save_weights
from tests.fetch_helpers import MemoryStore
from tests.kafka_helpers import produce


def make_weights(path: Path, version: str, seed: int) -> Path:
    """A randomly initialised (untrained) model: enough to test plumbing, not accuracy."""
    arch = "baseline" if "baseline" in list_models() else list_models()[0]
    torch.manual_seed(seed)
    model = create_model(arch)
    # Random BatchNorm statistics would make every p_fake identical; one training-mode pass fixes that.
    model.train()
    with torch.no_grad():
        model(torch.randn(64, 3, 32, 32))
    return save_weights(path, model.eval(), ModelMeta(arch=arch, version=version, threshold=0.5))


def jpeg(seed: int, size: tuple[int, int] = (32, 32), mode: str = "RGB", quality: int = 80) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def upload_images(stack: StackSettings, images: list[bytes]) -> list[str]:
    store = S3Store(stack.s3)
    keys = []
    for data in images:
        key = hashlib.sha256(data).hexdigest()
        store.put("images", key, data, "application/octet-stream")
        keys.append(key)
    return keys


def submit_refs(stack: StackSettings, topic: str, ids: list[str], keys: list[str]) -> None:
    msgs = [
        ImageSubmitted(image_id=i, ref=f"s3://images/{k}", submitted_at=utcnow(), source="test")
        for i, k in zip(ids, keys, strict=True)
    ]
    produce(stack, topic, [(m.image_id.encode(), encode(m)) for m in msgs])


def verdict_rows(stack: StackSettings, ids: list[str]) -> list[tuple[str, str, float, str]]:
    with connect(stack.pg) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT image_id, model_version, p_fake, label FROM verdicts"
            " WHERE image_id = ANY(%s) ORDER BY scored_at, image_id",
            (ids,),
        )
        return [(r[0], r[1], float(r[2]), r[3]) for r in cur.fetchall()]


def verdicts_offsets(stack: StackSettings) -> dict[int, int]:
    """End offsets of images.verdicts now: read verdict messages produced after this point."""
    consumer = KafkaConsumer(**stack.kafka.client_kwargs())
    try:
        tps = [
            TopicPartition(IMAGES_VERDICTS, p)
            for p in sorted(consumer.partitions_for_topic(IMAGES_VERDICTS) or [])
        ]
        return {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def verdict_messages(
    stack: StackSettings, since: dict[int, int], ids: set[str], timeout: float = 60
) -> list[Verdict]:
    """Verdict messages for ``ids`` produced after ``since``, until every id was seen (or timeout)."""
    consumer = KafkaConsumer(**stack.kafka.client_kwargs(), enable_auto_commit=False)
    out: list[Verdict] = []
    try:
        tps = [TopicPartition(IMAGES_VERDICTS, p) for p in since]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, since[tp.partition])
        seen: set[str] = set()
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.start()
        while not ids <= seen and not deadline.is_set():
            for msgs in consumer.poll(timeout_ms=200).values():
                for m in msgs:
                    v = decode(Verdict, m.value)
                    if v.image_id in ids:
                        out.append(v)
                        seen.add(v.image_id)
        timer.cancel()
        return out
    finally:
        consumer.close()


def scorer_settings(topic: str, group: str, weights: Path, **kw: Any) -> ScorerSettings:
    base: dict[str, Any] = {
        "input_topic": topic,
        "group_id": group,
        "weights": str(weights),
        "metrics_port": None,
        "follow_models": False,
        "max_batch": 32,
        "max_wait_ms": 20,
        "device": "cpu",
    }
    base.update(kw)
    return ScorerSettings(**base)


class ScorerThread:
    """An in-process scorer on a thread (signals are the subprocess tests' business)."""

    def __init__(self, stack: StackSettings, settings: ScorerSettings, **run_kw: Any) -> None:
        self.stats: RunStats | None = None
        self.error: BaseException | None = None

        def target() -> None:
            try:
                self.stats = run_scorer(stack, settings, **run_kw)
            except BaseException as e:  # surfaced by join()
                self.error = e

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def join(self, timeout: float = 120) -> RunStats:
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise AssertionError("scorer thread did not stop in time")
        if self.error:
            raise self.error
        assert self.stats is not None
        return self.stats


def ids_for(prefix: str, n: int) -> Iterator[str]:
    return (f"{prefix}-{i}" for i in range(n))


class MemorySink:
    """A ``VerdictSink`` that keeps the verdicts in a list: for handler tests that need no database."""

    def __init__(self) -> None:
        self.verdicts: list[Verdict] = []
        self.images: list[ImageRow] = []

    def write(self, images: list[ImageRow], verdicts: list[Verdict]) -> None:
        self.images.extend(images)
        self.verdicts.extend(verdicts)

    def close(self) -> None:
        pass


_inline_offsets = itertools.count()


def inline_batch(images: list[bytes], prefix: str) -> Batch:
    """A batch of ``images.submitted`` records carrying ``images`` inline, ids ``<prefix>-<i>``."""
    records = []
    for i, data in enumerate(images):
        msg = ImageSubmitted(
            image_id=f"{prefix}-{i}",
            inline=base64.b64encode(data).decode(),
            submitted_at=utcnow(),
            source="t",
        )
        records.append(
            Record("images.submitted", 0, next(_inline_offsets), msg.image_id.encode(), encode(msg))
        )
    return Batch(records)


def memory_handler(model: ServingModel, store: MemoryStore | None = None, **overrides: Any) -> ScoreHandler:
    """A ``ScoreHandler`` on memory fakes (one ``MemoryStore`` for fetching and storing, a ``MemorySink``),
    storing no inline image, with ``overrides`` for any of its arguments."""
    store = store if store is not None else MemoryStore()
    kwargs: dict[str, Any] = dict(
        fetcher=Fetcher(store),
        limits=DecodeLimits(),
        sink=MemorySink(),
        store=store,
        model=model,
        next_model=lambda: None,
        uncertain_band=0.1,
        metrics=ScorerMetrics.create(new_registry()),
        persist_inline="none",
    )
    return ScoreHandler(**{**kwargs, **overrides})
