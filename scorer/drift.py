"""Drift of the live p_fake distribution against the serving model's reference, as a PSI gauge.

The population stability index compares two histograms over the same fixed bins:
``PSI = sum_i (live_i - ref_i) * ln(live_i / ref_i)`` with both as proportions. It is 0 for identical
distributions; the usual reading is < 0.1 stable, 0.1-0.2 a moderate shift, > 0.2 a significant one (the
alert threshold in ``deploy/observability/alerts.yml``).

Bins: ten equal-width bins on [0, 1] (``EDGES``), the same edges as the ``scorer_pfake_ratio`` histogram.

Live side: the p_fake of the last ``window`` verdicts written by this process (a count window, not a time
window: at low traffic it simply spans longer).

Reference side, per model, in order of preference:
1. ``validation``: ``meta.metrics["val_pfake_hist"]`` of the weights file, the model's p_fake histogram on its
   validation split, as written by ``reference_histogram()`` (``{"edges": [...], "counts": [...]}``, or a bare
   list of ten counts over ``EDGES``). This is the champion-vs-validation comparison the alert is meant for.
2. ``warmup``: when the metadata has none (the shipped weights do not), the first ``warmup`` live predictions
   after the model started serving become the reference. That detects traffic that drifts *after* a
   deployment, but not a mismatch that was already there on the first day; the ``source`` label of
   ``scorer_pfake_reference_info`` says which kind is in use, so a dashboard never passes one for the
   other.

Until the reference and at least ``min_live`` live predictions exist the gauge is NaN (a comparison with NaN
is false in PromQL, so the alert stays quiet rather than firing on a handful of images). Everything is reset
when the scorer swaps models: both sides belong to one model version.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Gauge, Histogram

logger = logging.getLogger(__name__)

N_BINS = 10
EDGES: tuple[float, ...] = tuple(round(i / N_BINS, 10) for i in range(N_BINS + 1))
META_KEY = "val_pfake_hist"
# Proportions are floored at this value so an empty bin on one side gives a large, finite term.
EPSILON = 1e-4


def bin_counts(p_fake: Sequence[float] | np.ndarray) -> np.ndarray:
    """Counts of ``p_fake`` over ``EDGES`` (p = 1.0 falls in the last bin; non-finite values are dropped)."""
    p = np.asarray(p_fake, dtype=np.float64).ravel()
    p = p[np.isfinite(p)]
    idx = np.clip((p * N_BINS).astype(np.int64), 0, N_BINS - 1)
    return np.bincount(idx, minlength=N_BINS).astype(np.float64)


def psi(reference: Sequence[float] | np.ndarray, live: Sequence[float] | np.ndarray) -> float:
    """PSI of two histograms (counts or proportions) over the same bins; NaN when either is empty."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(live, dtype=np.float64)
    if ref.shape != cur.shape or ref.ndim != 1:
        raise ValueError(f"histograms differ in shape: {ref.shape} vs {cur.shape}")
    if ref.sum() <= 0 or cur.sum() <= 0:
        return math.nan
    p = np.maximum(ref / ref.sum(), EPSILON)
    q = np.maximum(cur / cur.sum(), EPSILON)
    return float(np.sum((q - p) * np.log(q / p)))


def reference_histogram(p_fake: Sequence[float] | np.ndarray) -> dict[str, list[float]]:
    """The metadata value for ``meta.metrics["val_pfake_hist"]`` from a model's validation p_fake."""
    return {"edges": list(EDGES), "counts": [float(c) for c in bin_counts(p_fake)]}


def reference_from_metrics(metrics: Mapping[str, Any]) -> np.ndarray | None:
    """The validation reference stored in weights metadata, or None (absent or unusable, with a warning)."""
    raw = metrics.get(META_KEY)
    if raw is None:
        return None
    try:
        if isinstance(raw, Mapping):
            edges = [float(e) for e in raw["edges"]]
            if len(edges) != len(EDGES) or any(abs(a - b) > 1e-9 for a, b in zip(edges, EDGES, strict=True)):
                raise ValueError(f"edges {edges} are not the scorer's {list(EDGES)}")
            counts = raw["counts"]
        else:
            counts = raw
        ref = np.asarray([float(c) for c in counts], dtype=np.float64)
        if ref.shape != (N_BINS,) or not np.all(np.isfinite(ref)) or (ref < 0).any() or ref.sum() <= 0:
            raise ValueError(f"expected {N_BINS} non-negative counts with a positive sum")
    except (KeyError, TypeError, ValueError) as e:
        logger.warning("ignoring metadata %s: %s; falling back to a warm-up reference", META_KEY, e)
        return None
    return ref


class PfakeDrift:
    """The p_fake histogram and the drift gauges of one scorer process (call from the scoring thread)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        app: str = "scorer",
        window: int = 5000,
        warmup: int = 2000,
        min_live: int = 500,
    ) -> None:
        if not 0 < min_live <= window or warmup <= 0:
            raise ValueError("need 0 < min_live <= window and warmup > 0")
        self.window, self.warmup, self.min_live = window, warmup, min_live
        self.pfake = Histogram(
            f"{app}_pfake_ratio",
            "p_fake of each verdict written, by model version",
            ["model_version"],
            buckets=EDGES[1:],
            registry=registry,
        )
        self.psi = Gauge(
            f"{app}_pfake_psi",
            "PSI of the last verdicts' p_fake vs the serving model's reference (NaN until both are ready)",
            registry=registry,
        )
        self.live_records = Gauge(
            f"{app}_pfake_window_records", "Verdicts in the live p_fake window", registry=registry
        )
        self.reference_info = Gauge(
            f"{app}_pfake_reference_info",
            "The drift reference in use (value 1): source=validation (from the weights) or warmup "
            "(first live predictions after the model started serving)",
            ["model_version", "source"],
            registry=registry,
        )
        self.version = ""
        self.source = "warmup"
        self.reference: np.ndarray | None = None
        self._warm = np.zeros(N_BINS)
        self._ring = np.zeros(window, dtype=np.int8)
        self._filled = 0
        self._pos = 0
        self.psi.set(math.nan)

    def reset(self, version: str, metrics: Mapping[str, Any]) -> None:
        """Start over for a newly serving model: its own reference, an empty live window."""
        self.version = version
        self.reference = reference_from_metrics(metrics)
        self.source = "validation" if self.reference is not None else "warmup"
        self._warm = np.zeros(N_BINS)
        self._filled = self._pos = 0
        self.psi.set(math.nan)
        self.live_records.set(0)
        self.reference_info.clear()
        self.reference_info.labels(version, self.source).set(1)
        logger.info("p_fake drift reference for %s: %s", version, self.source)

    def observe(self, p_fake: Sequence[float] | np.ndarray) -> float:
        """Account one batch of written verdicts; returns the PSI now exported (NaN if not ready)."""
        p = np.asarray(p_fake, dtype=np.float64).ravel()
        p = p[np.isfinite(p)]
        for v in p:
            self.pfake.labels(self.version).observe(v)
        if self.reference is None:
            take = min(len(p), self.warmup - int(self._warm.sum()))
            self._warm += bin_counts(p[:take])
            p = p[take:]
            if self._warm.sum() >= self.warmup:
                self.reference = self._warm
        self._push(p)
        value = math.nan
        if self.reference is not None and self._filled >= self.min_live:
            value = psi(self.reference, self.live_counts())
        self.psi.set(value)
        return value

    def live_counts(self) -> np.ndarray:
        return np.bincount(self._ring[: self._filled], minlength=N_BINS).astype(np.float64)

    def _push(self, p: np.ndarray) -> None:
        if len(p) == 0:
            return
        idx = np.clip((p * N_BINS).astype(np.int64), 0, N_BINS - 1).astype(np.int8)[-self.window :]
        slots = (self._pos + np.arange(len(idx))) % self.window
        self._ring[slots] = idx
        self._pos = int((self._pos + len(idx)) % self.window)
        self._filled = min(self.window, self._filled + len(idx))
        self.live_records.set(self._filled)
