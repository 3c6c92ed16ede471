"""Explaining one micro-batch of verdicts: parse, choose, look up, fetch, decode, explain, store, announce.

Per record: an unparseable verdict, an image without an ``images`` row or reference, an image that has
vanished from the store or no longer decodes, and a model version known nowhere are marked failed and
dead-lettered by the loop with a reason code; verdicts the policy does not select are skipped (committed,
nothing written). An unavailable dependency (database, object store) raises, so the loop retries the
whole batch without committing.

Durability order per batch: the three objects of every explanation, then one PostgreSQL transaction
upserting the rows, then the ``images.explanations`` messages (sent and flushed by the loop before it
commits). A crash anywhere before the commit replays the batch, which rewrites identical objects (no
timestamps in them), changes no row (``ON CONFLICT DO NOTHING``) and may repeat a message: downstream
readers key on (image_id, model_version, method).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import ValidationError

from explainer.cam import Method, TargetSpec
from explainer.models import Explainers, ModelCache
from explainer.render import render
from explainer.sink import ARTEFACTS, BUCKET, ExplanationRow, ExplanationSink, object_keys
from ingest.budget import as_fetched
from ingest.contracts import Explanation, ImageSubmitted, Verdict, decode, encode, utcnow
from ingest.decode import DecodeLimits, decode_image, to_rgb_array
from ingest.errors import InvalidMessage, PermanentError, is_transient
from ingest.fetch import Fetcher
from ingest.loop import Batch, Record
from ingest.storage import ObjectStore
from ingest.topics import IMAGES_EXPLANATIONS
from scorer.engine import ServingModel

logger = logging.getLogger(__name__)

Policy = Literal["flagged", "fake", "all"]
POLICY_LABELS: dict[str, frozenset[str]] = {
    "flagged": frozenset({"fake", "uncertain"}),
    "fake": frozenset({"fake"}),
    "all": frozenset({"real", "fake", "uncertain"}),
}


@dataclass
class ExplainerMetrics:
    explanations: Counter
    skipped: Counter
    stage_seconds: Histogram
    model_info: Gauge
    model_loads: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry, app: str = "explainer") -> ExplainerMetrics:
        return cls(
            explanations=Counter(
                f"{app}_explanations_total",
                "Explanations stored, by method and model version",
                ["method", "model_version"],
                registry=registry,
            ),
            skipped=Counter(
                f"{app}_skipped_total",
                "Verdicts the policy did not select, by label",
                ["label"],
                registry=registry,
            ),
            stage_seconds=Histogram(
                f"{app}_stage_seconds",
                "Wall time per batch and stage (lookup, fetch, decode, explain, render_store, write)",
                ["stage"],
                registry=registry,
            ),
            model_info=Gauge(
                f"{app}_model_info", "The current model (value 1)", ["version", "arch"], registry=registry
            ),
            model_loads=Counter(
                f"{app}_model_loads_total",
                "Models loaded from the registry for verdicts of another version, by outcome",
                ["outcome"],
                registry=registry,
            ),
        )


@dataclass
class _Item:
    record: Record
    verdict: Verdict
    ref: str | None = None
    array: np.ndarray | None = None


@dataclass
class _Timer:
    stages: dict[str, float] = field(default_factory=dict)
    _t: float = field(default_factory=time.monotonic)

    def lap(self, stage: str) -> None:
        now = time.monotonic()
        self.stages[stage] = self.stages.get(stage, 0.0) + now - self._t
        self._t = now


class ExplainHandler:
    def __init__(
        self,
        *,
        fetcher: Fetcher,
        limits: DecodeLimits,
        sink: ExplanationSink,
        store: ObjectStore,
        models: ModelCache,
        next_model: Callable[[], ServingModel | None],
        metrics: ExplainerMetrics,
        policy: Policy = "flagged",
        methods: Sequence[Method] = ("gradcam",),
        target: TargetSpec = "fake",
        output_topic: str = IMAGES_EXPLANATIONS,
        bucket: str = BUCKET,
        write_workers: int = 4,
    ) -> None:
        self.fetcher = fetcher
        self.limits = limits
        self.sink = sink
        self.store = store
        self.models = models
        self.next_model = next_model
        self.metrics = metrics
        self.labels = POLICY_LABELS[policy]
        self.methods = tuple(methods)
        self.target: TargetSpec = target
        self.output_topic = output_topic
        self.bucket = bucket
        # Object writes are network round trips: a small pool overlaps them.
        self._pool = ThreadPoolExecutor(max_workers=write_workers, thread_name_prefix="explain-io")
        self._show_model()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _show_model(self) -> None:
        s = self.models.current.serving
        self.metrics.model_info.clear()
        self.metrics.model_info.labels(s.version, s.meta.arch).set(1)

    def __call__(self, batch: Batch) -> None:
        new = self.next_model()
        if new is not None and new.version != self.models.current.version:
            self.models.swap(new)
            self._show_model()
        timer = _Timer()
        items = self._select(batch)
        self._lookup(batch, items)
        timer.lap("lookup")
        by_version: dict[str, list[tuple[_Item, ImageSubmitted]]] = {}
        for it, request in self._requests(batch, items):
            by_version.setdefault(it.verdict.model_version, []).append((it, request))
        rows: list[ExplanationRow] = []
        for version, group in by_version.items():
            ex = self._explainers(batch, version, [it for it, _ in group])
            if ex is None:
                continue
            live = self._fetch_decode(batch, group, ex.input_size)
            timer.lap("fetch_decode")
            rows.extend(self._explain(ex, live, timer))
        self.sink.write(rows)
        timer.lap("write")
        now = utcnow()
        source = {it.verdict.image_id: it.record for it in items}
        for row in rows:
            msg = Explanation(
                image_id=row.image_id,
                model_version=row.model_version,
                method=row.method,
                keys=row.keys,
                evidence=row.evidence,
                created_at=now,
            )
            batch.produce(self.output_topic, row.image_id.encode(), encode(msg), source.get(row.image_id))
            self.metrics.explanations.labels(row.method, row.model_version).inc()
        for stage, seconds in timer.stages.items():
            self.metrics.stage_seconds.labels(stage).observe(seconds)

    # -- steps ------------------------------------------------------------------------------------

    def _select(self, batch: Batch) -> list[_Item]:
        items = []
        for r in batch.records:
            try:
                v = decode(Verdict, r.value)
            except InvalidMessage as e:
                batch.fail(r, e)
                continue
            if v.label in self.labels:
                items.append(_Item(r, v))
            else:
                self.metrics.skipped.labels(v.label).inc()
        return items

    def _lookup(self, batch: Batch, items: list[_Item]) -> None:
        refs = self.sink.image_refs(sorted({it.verdict.image_id for it in items}))
        for it in items:
            vid = it.verdict.image_id
            if vid not in refs:
                batch.fail(it.record, PermanentError(f"no images row for {vid}", "unknown_image"))
            elif refs[vid] is None:
                batch.fail(it.record, PermanentError(f"image {vid} has no stored reference", "no_image_ref"))
            else:
                it.ref = refs[vid]

    def _requests(self, batch: Batch, items: list[_Item]) -> list[tuple[_Item, ImageSubmitted]]:
        # The safe fetcher takes submissions; the reference comes from our own images table, and one
        # that the contract refuses (written by something other than the scorer) fails only its record.
        out = []
        for it in items:
            if it.ref is None:
                continue
            try:
                msg = ImageSubmitted(
                    image_id=it.verdict.image_id,
                    ref=it.ref,
                    submitted_at=it.verdict.submitted_at,
                    source="explainer",
                )
            except ValidationError as e:
                batch.fail(
                    it.record,
                    PermanentError(f"stored reference is not valid: {e.errors()[0]['msg']}", "invalid_ref"),
                )
                continue
            out.append((it, msg))
        return out

    def _explainers(self, batch: Batch, version: str, group: list[_Item]) -> Explainers | None:
        try:
            before = self.models.loads
            ex = self.models.get(version)
            if self.models.loads != before:
                self.metrics.model_loads.labels("loaded").inc()
            return ex
        except PermanentError as e:
            self.metrics.model_loads.labels(e.code).inc()
            for it in group:
                batch.fail(it.record, e)
            return None

    def _fetch_decode(
        self, batch: Batch, group: list[tuple[_Item, ImageSubmitted]], size: int
    ) -> list[_Item]:
        """Fetch and decode ``group``: each image is decoded as it arrives and its bytes go back to the
        fetcher's budget at once (``ingest.budget``), so a batch of phone photos is never held whole."""
        budget = self.fetcher.budget
        futures = self.fetcher.submit_within([m for _, m in group], budget)
        ok = []
        with contextlib.closing(as_fetched(futures, budget)) as arrivals:
            for i, res in arrivals:
                it = group[i][0]
                if isinstance(res, bytes):
                    try:
                        it.array = to_rgb_array(decode_image(res, self.limits, target_size=size), size)
                        ok.append(it)
                    except PermanentError as e:
                        batch.fail(it.record, e)
                    finally:
                        budget.release(len(res))
                elif is_transient(res):
                    raise res  # the store is down: retry the whole batch, commit nothing
                else:
                    batch.fail(it.record, res)
        position = {id(it): n for n, (it, _) in enumerate(group)}
        return sorted(ok, key=lambda it: position[id(it)])  # the batch's order, whatever arrived first

    def _explain(self, ex: Explainers, items: list[_Item], timer: _Timer) -> list[ExplanationRow]:
        if not items:
            return []
        images = np.stack([it.array for it in items if it.array is not None])
        jobs = []
        for method, cam in ex.by_method.items():
            result = cam.explain(images, self.target)
            timer.lap("explain")
            for i, it in enumerate(items):
                # Rendering (PNG encoding releases the GIL) and the three puts run on the I/O pool.
                jobs.append(
                    self._pool.submit(
                        self._store_one,
                        it.verdict,
                        ex.version,
                        method,
                        cam.layer_name,
                        images[i],
                        result.maps[i],
                        float(result.p_fake[i]),
                    )
                )
        rows = [f.result() for f in jobs]  # re-raises a store failure: transient -> the batch is retried
        timer.lap("render_store")
        return rows

    def _store_one(
        self,
        v: Verdict,
        version: str,
        method: str,
        layer: str,
        image: np.ndarray,
        m: np.ndarray,
        p_fake: float,
    ) -> ExplanationRow:
        rendered = render(
            image,
            m,
            method=method,
            layer=layer,
            target=self.target,
            model_version=version,
            p_fake=p_fake,
            extra={"image_id": v.image_id, "verdict_label": v.label, "verdict_p_fake": v.p_fake},
        )
        keys = object_keys(v.image_id, version, method)
        payloads = {
            "map": rendered.map_png,
            "overlay": rendered.overlay_png,
            "sidecar": rendered.sidecar_bytes,
        }
        for kind, data in payloads.items():
            self.store.put(self.bucket, keys[kind], data, ARTEFACTS[kind][1])
        return ExplanationRow(v.image_id, version, method, keys, rendered.sidecar)
