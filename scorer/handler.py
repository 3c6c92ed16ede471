"""Scoring one micro-batch: parse, fetch, decode, infer, persist, announce.

Per record, bad input (unparseable message, missing or refused reference, undecodable image) is marked
failed and dead-lettered by the loop; the rest of the batch is scored. An unavailable dependency (object
store, database) raises, so the loop retries the whole batch without committing.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ingest.budget import as_fetched
from ingest.contracts import ImageSubmitted, Verdict, decode, encode, utcnow
from ingest.decode import DecodeLimits, decode_image, to_rgb_array
from ingest.errors import InvalidMessage, PermanentError, is_transient
from ingest.fetch import Fetcher
from ingest.loop import Batch, Record
from ingest.storage import ObjectStore
from ingest.topics import IMAGES_VERDICTS
from scorer.drift import PfakeDrift
from scorer.engine import ServingModel, label_for
from scorer.known_index import KnownIndex
from scorer.signals import (
    ImageSignals,
    SignalMetrics,
    SignalReader,
    SignalSettings,
    decide,
    lookup,
    observe,
)
from scorer.sink import ImageRow, VerdictSink

logger = logging.getLogger(__name__)

# Which inline images the scorer stores in the object store (ScorerSettings.persist_inline).
PersistInline = Literal["all", "flagged", "none"]

# Chunks per micro-batch at least, and images per chunk at least (below ~8 the model's per-call cost shows).
_MIN_CHUNKS = 4
_MIN_CHUNK = 8

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class ScorerMetrics:
    verdicts: Counter
    stage_seconds: Histogram
    e2e_seconds: Histogram
    model_info: Gauge
    drift: PfakeDrift
    signals: SignalMetrics

    @classmethod
    def create(cls, registry: CollectorRegistry, app: str = "scorer") -> ScorerMetrics:
        return cls(
            verdicts=Counter(
                f"{app}_verdicts_total",
                "Verdicts written, by label",
                ["label", "model_version"],
                registry=registry,
            ),
            stage_seconds=Histogram(
                f"{app}_stage_seconds",
                "Wall time per batch and stage (fetch, decode, infer, write)",
                ["stage"],
                registry=registry,
            ),
            e2e_seconds=Histogram(
                f"{app}_end_to_end_latency_seconds",
                "submitted_at to verdict durable, per image",
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            model_info=Gauge(
                f"{app}_model_info", "The serving model (value 1)", ["version", "arch"], registry=registry
            ),
            drift=PfakeDrift(registry, app),
            signals=SignalMetrics.create(registry, app),
        )


@dataclass
class _Item:
    record: Record
    msg: ImageSubmitted
    data: bytes | None = None  # an inline image's bytes, kept to store it; fetched bytes are not kept
    digest: str | None = None  # sha256 of the image bytes
    array: np.ndarray | None = None
    size: tuple[int, int] | None = None
    fmt: str | None = None
    found: ImageSignals = field(default_factory=ImageSignals)


class ScoreHandler:
    def __init__(
        self,
        *,
        fetcher: Fetcher,
        limits: DecodeLimits,
        sink: VerdictSink,
        store: ObjectStore,
        model: ServingModel,
        next_model: Callable[[], ServingModel | None],
        uncertain_band: float,
        metrics: ScorerMetrics,
        persist_inline: PersistInline = "all",
        decode_workers: int = 2,
        chunk: int = 64,
        signals: SignalSettings | None = None,
        known_index: KnownIndex | None = None,
    ) -> None:
        """``signals`` None: no PDQ, provenance or known-content matching (the model alone decides)."""
        self.fetcher = fetcher
        self.limits = limits
        self.sink = sink
        self.store = store
        self.model = model
        self.next_model = next_model
        self.band = uncertain_band
        self.metrics = metrics
        self.persist_inline = persist_inline
        self.chunk = max(1, chunk)
        self.signal_settings = signals
        self.reader = SignalReader(signals) if signals is not None else None
        self.known_index = known_index
        # PIL releases the GIL while decoding, so a small pool overlaps decodes on a multi-core host.
        self._decode_pool = ThreadPoolExecutor(max_workers=decode_workers, thread_name_prefix="decode")
        # Inline images are stored concurrently: one PUT after another held a 256-image batch for 256
        # round trips of the object store.
        self._put_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="put")
        # The model runs on its own thread (ONNX Runtime and PyTorch release the GIL), so that while one
        # chunk is inferred this thread goes on handing the next arrivals to the decoders.
        self._infer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infer")
        self._show_model()

    def close(self) -> None:
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        self._put_pool.shutdown(wait=False, cancel_futures=True)
        self._infer_pool.shutdown(wait=False, cancel_futures=True)

    def _show_model(self) -> None:
        self.metrics.model_info.clear()
        self.metrics.model_info.labels(self.model.version, self.model.meta.arch).set(1)
        self.metrics.drift.reset(self.model.version, self.model.meta.metrics)

    def _maybe_swap(self) -> None:
        new = self.next_model()
        if new is not None and new.version != self.model.version:
            logger.info("switching model %s -> %s between batches", self.model.version, new.version)
            self.model = new
            self._show_model()

    def __call__(self, batch: Batch) -> None:
        self._maybe_swap()
        model = self.model  # one model per batch: every verdict of the batch names this version
        timings = {"fetch": 0.0, "decode": 0.0, "infer": 0.0}
        items, p_fake = self._score(batch, self._parse(batch), model, timings)
        self._account(batch, items)
        if not items:
            return
        t3 = time.monotonic()
        verdicts = self._verdicts(items, p_fake, model, timings)
        stored = self._persist_inline(items, verdicts)
        rows = [self._image_row(it, v, id(it) in stored) for it, v in zip(items, verdicts, strict=True)]
        self.sink.write(rows, verdicts)
        t4 = time.monotonic()
        for it, v in zip(items, verdicts, strict=True):
            batch.produce(IMAGES_VERDICTS, it.record.key or v.image_id.encode(), encode(v), it.record)
        self._observe(verdicts, {**timings, "write": (t4 - t3) * 1e3})

    # -- steps ------------------------------------------------------------------------------------

    def _verdicts(
        self, items: list[_Item], p_fake: np.ndarray, model: ServingModel, timings: dict[str, float]
    ) -> list[Verdict]:
        t0 = time.monotonic()
        cfg = self.signal_settings
        matches = lookup(self.known_index, [it.found for it in items], cfg.min_quality) if cfg else []
        timings["match"] = (time.monotonic() - t0) * 1e3
        scored_at = utcnow()
        verdicts = []
        for i, (it, p) in enumerate(zip(items, p_fake, strict=True)):
            label = label_for(float(p), model.meta.threshold, self.band)
            signals = None
            if cfg is not None:
                label, signals = decide(label, it.found, matches[i], cfg.provenance_decides)
                observe(self.metrics.signals, it.found, signals, cfg.min_quality)
            verdicts.append(
                Verdict(
                    image_id=it.msg.image_id,
                    model_version=model.version,
                    p_fake=float(p),
                    label=label,
                    threshold=model.meta.threshold,
                    original_size=it.size,
                    original_format=it.fmt,
                    submitted_at=it.msg.submitted_at,
                    scored_at=scored_at,
                    timings_ms={k: round(v, 3) for k, v in timings.items()},
                    signals=signals,
                )
            )
        return verdicts

    @staticmethod
    def _account(batch: Batch, items: list[_Item]) -> None:
        """Every record must end as a verdict or a dead letter; a record that is neither is a bug
        in this handler, and it is dead-lettered rather than silently committed."""
        scored = {(it.record.topic, it.record.partition, it.record.offset) for it in items}
        for r in list(batch.pending()):
            if (r.topic, r.partition, r.offset) not in scored:
                logger.error("record %s was neither scored nor failed; dead-lettering it", r.where)
                batch.fail(r, PermanentError("internal: record was neither scored nor failed", "unaccounted"))

    def _parse(self, batch: Batch) -> list[_Item]:
        items = []
        for r in batch.records:
            try:
                items.append(_Item(r, decode(ImageSubmitted, r.value)))
            except InvalidMessage as e:
                batch.fail(r, e)
        return items

    def _score(
        self, batch: Batch, items: list[_Item], model: ServingModel, timings: dict[str, float]
    ) -> tuple[list[_Item], np.ndarray]:
        """Fetch, decode and infer ``items``: every fetch starts at once on the fetcher's pool; each image
        goes to the decode pool as soon as it arrives (in arrival order) and gives its bytes back to the
        fetcher's budget once decoded (``ingest.budget``); every ``chunk`` images handed to the decoders go
        to the inference thread, which waits for their decodes and runs the model while this thread keeps
        handing arrivals to the decoders. So the network, the decoders and the model overlap, and a batch of
        phone photos holds at most the budget in raw bytes, not the whole batch. ``timings`` gets the
        milliseconds spent on each stage: this thread's wait for fetches, and the inference thread's wait
        for decodes and its model time.

        Returns the items that reached the model and their p_fake; the others are failed.
        """
        budget = self.fetcher.budget
        futures = self.fetcher.submit_within([it.msg for it in items], budget)
        decoding: list[tuple[_Item, Future[PermanentError | None]]] = []
        chunks: list[Future[_Chunk]] = []
        # At least _MIN_CHUNKS chunks per batch: the small batches of a lightly loaded scorer overlap their
        # fetches with the model too, instead of waiting for the last fetch before the first inference.
        chunk = min(self.chunk, max(_MIN_CHUNK, -(-len(items) // _MIN_CHUNKS)))
        t0 = time.monotonic()
        try:
            with contextlib.closing(as_fetched(futures, budget)) as arrivals:
                for i, res in arrivals:
                    it = items[i]
                    if isinstance(res, bytes):
                        decoding.append((it, self._submit_decode(it, res, model.input_size)))
                    elif is_transient(res):
                        raise res  # the whole batch is retried; closing ``arrivals`` returns the budget
                    else:
                        batch.fail(it.record, res)
                    if len(decoding) >= chunk:
                        chunks.append(self._infer_pool.submit(_infer_chunk, decoding, model))
                        decoding = []
            timings["fetch"] += (time.monotonic() - t0) * 1e3
            if decoding:
                chunks.append(self._infer_pool.submit(_infer_chunk, decoding, model))
            done = [c.result() for c in chunks]
        finally:
            for c in chunks:
                c.cancel()  # after an error: chunks not started yet are dropped with the batch
        return _collect(batch, items, done, timings)

    def _submit_decode(self, it: _Item, data: bytes, size: int) -> Future[PermanentError | None]:
        """Decode on the pool; ``data`` goes back to the fetch budget when the job ends, or is cancelled
        (``close()`` cancels queued jobs) without running."""
        job = self._decode_pool.submit(self._decode_one, it, data, size)
        n = len(data)
        job.add_done_callback(lambda f: self.fetcher.budget.release(n) if f.cancelled() else None)
        return job

    def _decode_one(self, it: _Item, data: bytes, size: int) -> PermanentError | None:
        """Runs on the decode pool. Whatever happens, ``data`` goes back to the fetch budget here; only an
        inline image's bytes are kept (they are stored after the batch, and came in the message anyway)."""
        try:
            it.digest = hashlib.sha256(data).hexdigest()
            if it.msg.inline is not None:
                it.data = data
            if self.reader is not None:
                # From the original bytes, before any pixel is decoded; never raises.
                it.found.provenance = self.reader.provenance(data)
            decoded = decode_image(data, self.limits, target_size=size)
            it.array = to_rgb_array(decoded, size)
            it.size, it.fmt = decoded.size, decoded.format
            if self.reader is not None:
                self.reader.hash(it.array, it.found)
            return None
        except PermanentError as e:
            return e
        finally:
            self.fetcher.budget.release(len(data))

    def _persist_inline(self, items: list[_Item], verdicts: list[Verdict]) -> set[int]:
        """Store inline images under their hash, so that the explainer and reviewers can see them later:
        all of them, or with ``flagged`` only those not labelled ``real`` (what the explainer's default
        policy explains and the console queues). Returns ``id()`` of the stored items; a failed PUT raises
        (transient: the batch is retried) before any verdict is written."""
        if self.persist_inline == "none":
            return set()
        todo = [
            it
            for it, v in zip(items, verdicts, strict=True)
            if it.msg.inline is not None
            and it.data is not None
            and it.digest is not None
            and (self.persist_inline == "all" or v.label != "real")
        ]
        jobs = [self._put_pool.submit(self.store.put, "images", it.digest, it.data) for it in todo]  # type: ignore[arg-type]
        for job in jobs:
            job.result()
        return {id(it) for it in todo}

    def _image_row(self, it: _Item, v: Verdict, stored: bool) -> ImageRow:
        digest = it.digest or hashlib.sha256(b"").hexdigest()
        ref = it.msg.ref or (f"s3://images/{digest}" if stored else None)
        pdq = v.signals.pdq if v.signals is not None else None  # hashed once, in the decode thread
        return ImageRow(
            it.msg.image_id,
            ref,
            digest,
            it.msg.source,
            it.msg.submitted_at,
            dict(it.msg.metadata),
            pdq.hash if pdq is not None else None,
            pdq.quality if pdq is not None else None,
        )

    def _observe(self, verdicts: list[Verdict], timings_ms: dict[str, float]) -> None:
        m = self.metrics
        for stage, ms in timings_ms.items():
            m.stage_seconds.labels(stage).observe(ms / 1e3)
        now = utcnow()
        for v in verdicts:
            m.verdicts.labels(v.label, v.model_version).inc()
            m.e2e_seconds.observe(max(0.0, (now - v.submitted_at).total_seconds()))
        m.drift.observe([v.p_fake for v in verdicts])


@dataclass
class _Chunk:
    """What the inference thread made of one chunk: the items it scored and their p_fake, the undecodable
    ones with their errors (failed by the scoring thread: a ``Batch`` is not shared between threads), and
    its milliseconds waiting for decodes and in the model."""

    scored: list[_Item]
    probs: np.ndarray
    failed: list[tuple[_Item, PermanentError]]
    decode_ms: float
    infer_ms: float


def _infer_chunk(decoding: list[tuple[_Item, Future[PermanentError | None]]], model: ServingModel) -> _Chunk:
    """Runs on the inference thread: wait for the chunk's decodes, then run the model on the decodable."""
    t0 = time.monotonic()
    live, failed = [], []
    for it, job in decoding:
        err = job.result()
        if err is None:
            live.append(it)
        else:
            failed.append((it, err))
    t1 = time.monotonic()
    probs = np.zeros(0, dtype=np.float32)
    if live:
        probs = model.predict(np.stack([it.array for it in live if it.array is not None]))
    return _Chunk(live, probs, failed, (t1 - t0) * 1e3, (time.monotonic() - t1) * 1e3)


def _collect(
    batch: Batch, items: list[_Item], chunks: list[_Chunk], timings: dict[str, float]
) -> tuple[list[_Item], np.ndarray]:
    """The scored items of every chunk back in the batch's order (so that verdicts do not depend on which
    fetch finished first) with their p_fake; the undecodable are failed."""
    scored: list[_Item] = []
    for c in chunks:
        for it, err in c.failed:
            batch.fail(it.record, err)
        scored += c.scored
        timings["decode"] += c.decode_ms
        timings["infer"] += c.infer_ms
    if not scored:
        return [], np.zeros(0, dtype=np.float32)
    position = {id(it): n for n, it in enumerate(items)}
    order = sorted(range(len(scored)), key=lambda k: position[id(scored[k])])
    return [scored[k] for k in order], np.concatenate([c.probs for c in chunks if c.scored])[order]
