"""Evaluation: every report key and file on a tiny dataset, and the numpy metrics against brute force."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from retrainer.__main__ import main as retrainer_main
from retrainer.evaluate import REPORT_KEYS, EvalConfig, evaluate
from retrainer.metrics import auroc, average_precision, best_threshold, ece, fit_temperature
from retrainer.perturb import PERTURBATIONS
from retrainer.synthetic import make_synthetic_cifake
from scorer.models import create_model
from scorer.weights import ModelMeta, save_weights


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.setenv("CIFAKE_CACHE_DIR", str(tmp_path / "cache"))
    data = make_synthetic_cifake(tmp_path / "data", n_per_class=30, splits=("train", "test"), n_duplicates=3)
    torch.manual_seed(0)
    weights = save_weights(
        tmp_path / "w.safetensors",
        create_model("fastnet_s"),
        ModelMeta(arch="fastnet_s", threshold=0.5, split={"val_fraction": 0.3, "seed": 0}, version="tiny"),
    )
    return data, weights


@pytest.mark.parametrize("split", ["val", "test"])
def test_evaluate_writes_every_key_and_figure(tiny: tuple[Path, Path], tmp_path: Path, split: str) -> None:
    data, weights = tiny
    out = tmp_path / f"report-{split}"
    report = evaluate(
        EvalConfig(weights=str(weights), data=str(data), split=split, out=str(out), robustness=True)
    )
    saved = json.loads((out / "report.json").read_text())
    for key in REPORT_KEYS:
        assert key in saved, key
    assert all(k == k.lower() for k in saved)
    assert set(saved["robustness"]) == set(PERTURBATIONS)
    assert "accuracy_drop" in saved["robustness"]["jpeg_q50"]
    assert saved["counts"]["n"] == report["counts"]["n"] > 0
    assert len(saved["accuracy_per_category"]) == 10
    for name in ("confusion", "roc", "pr", "reliability", "worst_errors", "robustness"):
        assert (out / f"{name}.png").stat().st_size > 0
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "accuracy_dedup" in html


def test_evaluate_cli(tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, weights = tiny
    rc = retrainer_main(
        ["evaluate", "--weights", str(weights), "--data", str(data), "--out", str(tmp_path / "r")]
    )
    assert rc == 0
    assert "accuracy_dedup" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_perturbations_keep_shape_and_change_pixels() -> None:
    imgs = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    for name, fn in PERTURBATIONS.items():
        out = fn(imgs)
        assert out.shape == imgs.shape and out.dtype == np.uint8, name
        assert not np.array_equal(out, imgs), name


def _auroc_brute(y: np.ndarray, p: np.ndarray) -> float:
    pos, neg = p[y == 1], p[y == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 10)), min_size=2, max_size=60))
def test_auroc_matches_pairwise_definition(pairs: list[tuple[int, int]]) -> None:
    y = np.array([a for a, _ in pairs])
    p = np.array([b / 10 for _, b in pairs])  # coarse scores, so ties happen
    if y.min() == y.max():
        assert np.isnan(auroc(y, p))
    else:
        assert auroc(y, p) == pytest.approx(_auroc_brute(y, p))


def test_average_precision_and_ece_known_values() -> None:
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.8, 0.7, 0.1])
    assert average_precision(y, p) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert ece(np.array([1, 0]), np.array([1.0, 0.0])) == pytest.approx(0.0)
    assert ece(np.array([0, 0]), np.array([0.9, 0.9])) == pytest.approx(0.9)
    assert best_threshold(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.7, 0.9])) == pytest.approx(0.61)


def test_fit_temperature_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(0)
    margin = rng.normal(0, 3, 20_000)
    y = (rng.random(20_000) < 1 / (1 + np.exp(-margin))).astype(np.int64)
    logits = np.stack([np.zeros_like(margin), margin * 2.5], axis=1)  # over-confident by 2.5x
    assert fit_temperature(logits, y) == pytest.approx(2.5, rel=0.05)
