"""Scoring one micro-batch: parse, fetch, decode, infer, persist, announce.

Per record, bad input (unparseable message, missing or refused reference, undecodable image) is marked
failed and dead-lettered by the loop; the rest of the batch is scored. An unavailable dependency (object
store, database) raises, so the loop retries the whole batch without committing.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ingest.contracts import ImageSubmitted, Verdict, decode, encode, utcnow
from ingest.decode import DecodeLimits, decode_image, to_rgb_array
from ingest.errors import InvalidMessage, PermanentError, is_transient
from ingest.fetch import Fetcher, outcome
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
    data: bytes | None = None  # None until fetched; b"" is a fetched empty object (dead-lettered)
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
        persist_inline: bool = True,
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
        self._show_model()

    def close(self) -> None:
        self._decode_pool.shutdown(wait=False, cancel_futures=True)

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
        self._persist_inline(items)
        verdicts = self._verdicts(items, p_fake, model, timings)
        self.sink.write([self._image_row(it, v) for it, v in zip(items, verdicts, strict=True)], verdicts)
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
        """Fetch, decode and infer ``items`` chunk by chunk: every fetch starts at once on the fetcher's
        pool, and while one chunk is decoded and inferred the pool keeps fetching the next ones, so the
        network wait and the model overlap instead of taking turns (one scorer process then uses both
        cores). ``timings`` gets the milliseconds this thread waited on each stage.

        Returns the items that reached the model and their p_fake, in order; the others are failed.
        """
        pending = self.fetcher.submit_many([it.msg for it in items])
        scored: list[_Item] = []
        probs: list[np.ndarray] = []
        try:
            for start in range(0, len(items), self.chunk):
                t0 = time.monotonic()
                chunk = self._collect(batch, items[start : start + self.chunk], pending[start:])
                t1 = time.monotonic()
                live = self._decode(batch, chunk, model.input_size)
                t2 = time.monotonic()
                if live:
                    probs.append(model.predict(np.stack([it.array for it in live if it.array is not None])))
                    scored += live
                t3 = time.monotonic()
                timings["fetch"] += (t1 - t0) * 1e3
                timings["decode"] += (t2 - t1) * 1e3
                timings["infer"] += (t3 - t2) * 1e3
        finally:
            for f in pending:  # after a transient error: stop fetching for a batch that will be retried
                f.cancel()
        return scored, np.concatenate(probs) if probs else np.zeros(0, dtype=np.float32)

    @staticmethod
    def _collect(batch: Batch, chunk: list[_Item], futures: list[Future[bytes]]) -> list[_Item]:
        """Wait for the fetches of ``chunk``: the fetched items; the refused ones are failed. An
        unavailable store raises, so the whole batch is retried and nothing is committed."""
        fetched = []
        for it, future in zip(chunk, futures, strict=False):
            res = outcome(future)
            if isinstance(res, bytes):
                it.data = res
                fetched.append(it)
            elif is_transient(res):
                raise res
            else:
                batch.fail(it.record, res)
        return fetched

    def _decode(self, batch: Batch, live: list[_Item], size: int) -> list[_Item]:
        results = list(self._decode_pool.map(lambda it: self._decode_one(it, size), live))
        ok = []
        for it, err in zip(live, results, strict=True):
            if err is None:
                ok.append(it)
            else:
                batch.fail(it.record, err)
        return ok

    def _decode_one(self, it: _Item, size: int) -> PermanentError | None:
        assert it.data is not None
        try:
            if self.reader is not None:
                # From the original bytes, before any pixel is decoded; never raises.
                it.found.provenance = self.reader.provenance(it.data)
            decoded = decode_image(it.data, self.limits, target_size=size)
            it.array = to_rgb_array(decoded, size)
            it.size, it.fmt = decoded.size, decoded.format
            if self.reader is not None:
                self.reader.hash(it.array, it.found)
            return None
        except PermanentError as e:
            return e

    def _persist_inline(self, items: list[_Item]) -> None:
        """Inline images are stored under their hash so the explainer and reviewers can see them later."""
        if not self.persist_inline:
            return
        for it in items:
            if it.msg.inline is not None and it.data is not None:
                self.store.put("images", hashlib.sha256(it.data).hexdigest(), it.data)

    def _image_row(self, it: _Item, v: Verdict) -> ImageRow:
        digest = hashlib.sha256(it.data or b"").hexdigest()
        ref = it.msg.ref or (f"s3://images/{digest}" if self.persist_inline else None)
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
