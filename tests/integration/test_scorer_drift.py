"""p_fake drift: PSI arithmetic, the reference read from weights metadata, and the gauges on the scorer's
metrics registry as the scoring handler drives them (with a real model, in-memory store and sink)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from ingest.metrics import new_registry
from scorer.drift import (
    EDGES,
    N_BINS,
    PfakeDrift,
    bin_counts,
    psi,
    reference_from_metrics,
    reference_histogram,
)
from scorer.engine import ServingModel
from scorer.handler import ScorerMetrics
from scorer.weights import ModelMeta, read_meta, save_weights
from tests.scorer_helpers import inline_batch, jpeg, make_weights, memory_handler

# -- PSI arithmetic ---------------------------------------------------------------------------


def test_identical_distributions_have_zero_psi() -> None:
    rng = np.random.default_rng(0)
    ref = bin_counts(rng.beta(0.5, 0.5, 20_000))
    assert psi(ref, ref) == pytest.approx(0.0, abs=1e-12)
    # Same distribution, independent samples: only sampling noise (well under the 0.1 "stable" bar).
    assert psi(ref, bin_counts(rng.beta(0.5, 0.5, 20_000))) < 0.01
    # Counts and proportions are the same histogram.
    assert psi(ref, ref / ref.sum()) == pytest.approx(0.0, abs=1e-12)


def test_shifted_distribution_has_large_psi() -> None:
    rng = np.random.default_rng(1)
    ref = bin_counts(rng.beta(2, 5, 20_000))  # mostly real-looking (low p_fake)
    moderate = bin_counts(np.clip(rng.beta(2, 5, 20_000) + 0.08, 0, 1))
    shifted = bin_counts(rng.beta(5, 2, 20_000))  # mostly fake-looking
    assert 0.1 < psi(ref, moderate) < psi(ref, shifted)
    assert psi(ref, shifted) > 2.0
    assert psi(ref, shifted) == pytest.approx(psi(shifted, ref), rel=1e-9)  # PSI is symmetric


def test_psi_by_hand_and_empty_bins() -> None:
    ref = [50, 50] + [0] * (N_BINS - 2)
    live = [25, 75] + [0] * (N_BINS - 2)
    expected = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    assert psi(ref, live) == pytest.approx(expected)
    # A bin empty on one side is floored, not infinite.
    assert math.isfinite(psi([1] + [0] * (N_BINS - 1), [0] * (N_BINS - 1) + [1]))
    assert math.isnan(psi([0] * N_BINS, [1] * N_BINS))
    with pytest.raises(ValueError):
        psi([1, 2], [1, 2, 3])


def test_bin_counts_edges() -> None:
    counts = bin_counts([0.0, 0.0999, 0.1, 0.5, 0.9999, 1.0, float("nan"), -0.2, 1.3])
    assert counts.tolist() == [3, 1, 0, 0, 0, 1, 0, 0, 0, 3]
    assert len(EDGES) == N_BINS + 1 and EDGES[0] == 0.0 and EDGES[-1] == 1.0


# -- the reference from metadata --------------------------------------------------------------


def test_reference_from_metadata_forms() -> None:
    values = np.linspace(0, 1, 101)
    stored = reference_histogram(values)
    assert stored["edges"] == list(EDGES) and sum(stored["counts"]) == 101
    ref = reference_from_metrics({"val_pfake_hist": stored})
    assert ref is not None and ref.tolist() == stored["counts"]
    bare = reference_from_metrics({"val_pfake_hist": stored["counts"]})
    assert bare is not None and bare.tolist() == stored["counts"]
    assert reference_from_metrics({}) is None


@pytest.mark.parametrize(
    "bad",
    [
        {"edges": [0.0, 0.5, 1.0], "counts": [1, 1]},  # other bins: not comparable
        {"counts": [1] * N_BINS},  # dict without edges
        [1] * (N_BINS - 1),
        [-1] + [1] * (N_BINS - 1),
        [0] * N_BINS,
        "not a histogram",
    ],
)
def test_unusable_reference_falls_back(bad: object) -> None:
    assert reference_from_metrics({"val_pfake_hist": bad}) is None


def test_reference_survives_weights_metadata(tmp_path: Path) -> None:
    """The histogram written by reference_histogram() round-trips through a weights file."""
    w = make_weights(tmp_path / "a.safetensors", "v-a", seed=1)
    meta = read_meta(w)
    meta.metrics["val_pfake_hist"] = reference_histogram([0.1, 0.2, 0.95])
    from scorer.weights import load_weights

    model, _ = load_weights(w)
    out = save_weights(tmp_path / "b.safetensors", model, meta)
    ref = reference_from_metrics(read_meta(out).metrics)
    assert ref is not None and ref.sum() == 3


# -- the monitor --------------------------------------------------------------------------------


def _sample(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float | None:
    return registry.get_sample_value(name, labels or {})


def _reference(registry: CollectorRegistry, version: str, source: str) -> float | None:
    return _sample(registry, "scorer_pfake_reference_info", {"model_version": version, "source": source})


def test_warmup_reference_then_shift() -> None:
    reg = new_registry()
    drift = PfakeDrift(reg, window=400, warmup=300, min_live=100)
    drift.reset("v1", {})
    assert _sample(reg, "scorer_pfake_reference_info", {"model_version": "v1", "source": "warmup"}) == 1
    rng = np.random.default_rng(2)
    # 300 warm-up predictions become the reference; the next 99 are not enough for a PSI yet.
    assert math.isnan(drift.observe(rng.beta(2, 5, 399)))
    stable = drift.observe(rng.beta(2, 5, 1))
    assert stable < 0.1
    assert _sample(reg, "scorer_pfake_window_records") == 100
    for _ in range(4):  # the window slides until it holds only shifted traffic
        shifted = drift.observe(rng.beta(5, 2, 100))
    assert shifted > 1.0
    assert _sample(reg, "scorer_pfake_psi") == pytest.approx(shifted)
    assert _sample(reg, "scorer_pfake_window_records") == 400
    assert _sample(reg, "scorer_pfake_ratio_count", {"model_version": "v1"}) == 800


def test_reset_starts_over_with_the_new_models_reference() -> None:
    reg = new_registry()
    drift = PfakeDrift(reg, window=200, warmup=100, min_live=50)
    drift.reset("v1", {})
    drift.observe(np.full(300, 0.05))
    assert _sample(reg, "scorer_pfake_psi") == pytest.approx(0.0, abs=1e-12)
    drift.reset("v2", {"val_pfake_hist": reference_histogram(np.full(10, 0.95))})
    assert math.isnan(_sample(reg, "scorer_pfake_psi") or 0.0)
    assert _sample(reg, "scorer_pfake_window_records") == 0
    assert _sample(reg, "scorer_pfake_reference_info", {"model_version": "v1", "source": "warmup"}) is None
    assert _sample(reg, "scorer_pfake_reference_info", {"model_version": "v2", "source": "validation"}) == 1
    # A validation reference needs no warm-up: min_live predictions suffice.
    assert drift.observe(np.full(50, 0.95)) == pytest.approx(0.0, abs=1e-12)
    assert drift.observe(np.full(50, 0.05)) > 1.0


def test_batch_larger_than_window() -> None:
    drift = PfakeDrift(new_registry(), window=50, warmup=10, min_live=10)
    drift.reset("v1", {"val_pfake_hist": reference_histogram([0.5])})
    drift.observe(np.concatenate([np.full(100, 0.05), np.full(50, 0.55)]))
    assert drift.live_counts().tolist() == [0, 0, 0, 0, 0, 50, 0, 0, 0, 0]


# -- on the scorer's registry, driven by the handler -------------------------------------------


def test_scorer_registry_exports_drift_and_resets_on_swap(tmp_path: Path) -> None:
    images = [jpeg(seed) for seed in range(500)]  # the default min_live
    first = ServingModel.load(make_weights(tmp_path / "a.safetensors", "v-a", seed=1), "cpu")
    second_path = make_weights(tmp_path / "b.safetensors", "v-b", seed=2)
    second = ServingModel.load(second_path, "cpu")
    # The second model's "validation" reference is its own p_fake on these very images, so the live
    # distribution matches it exactly and the PSI must come out ~0.
    probe = memory_handler(second)
    probe(inline_batch(images, "drift"))
    own = [v.p_fake for v in probe.sink.verdicts]  # type: ignore[attr-defined]
    probe.close()
    meta: ModelMeta = second.meta
    meta.metrics["val_pfake_hist"] = reference_histogram(own)

    registry = new_registry()
    pending: list[ServingModel] = []
    handler = memory_handler(
        first,
        next_model=lambda: pending.pop() if pending else None,
        metrics=ScorerMetrics.create(registry),
    )
    try:
        handler(inline_batch(images[:20], "drift"))
        text = generate_latest(registry).decode()
        for name in (
            "scorer_pfake_psi",
            "scorer_pfake_window_records",
            "scorer_pfake_reference_info",
            "scorer_pfake_ratio_bucket",
        ):
            assert f"\n{name}" in text, name
        assert math.isnan(_sample(registry, "scorer_pfake_psi") or 0.0)  # warming up: 20 of 2000
        assert _reference(registry, "v-a", "warmup") == 1
        assert _sample(registry, "scorer_pfake_ratio_count", {"model_version": "v-a"}) == 20

        pending.append(second)
        handler(inline_batch(images, "drift"))
        assert handler.model.version == "v-b"
        assert _reference(registry, "v-a", "warmup") is None
        assert _reference(registry, "v-b", "validation") == 1
        assert _sample(registry, "scorer_pfake_window_records") == 500
        assert _sample(registry, "scorer_pfake_psi") == pytest.approx(0.0, abs=1e-9)
        assert _sample(registry, "scorer_pfake_ratio_count", {"model_version": "v-b"}) == 500
    finally:
        handler.close()
