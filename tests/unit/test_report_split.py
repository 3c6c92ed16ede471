"""The final-report split (issue 18's honest protocol): carved from the validation split, disjoint from what
training tunes on, stratified and grouped by content, reproducible from the model's metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retrainer.data import CATEGORIES, load_split, split_report, split_train_val
from retrainer.evaluate import load_eval_split
from retrainer.synthetic import make_synthetic_cifake
from retrainer.train import TrainConfig, prepare_data, train
from scorer.weights import ModelMeta, read_meta


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CIFAKE_CACHE_DIR", str(tmp_path / "cache"))
    return make_synthetic_cifake(tmp_path / "data", n_per_class=200, n_duplicates=6, n_corrupt=0)


def test_report_part_is_a_stratified_content_grouped_half_of_validation(data: Path) -> None:
    ds = load_split(str(data), "train")
    _, val_idx = split_train_val(ds, 0.3, seed=0)
    tune, report = split_report(ds, val_idx, 0.5, seed=0)
    assert set(tune).isdisjoint(report)
    assert sorted(np.concatenate([tune, report])) == sorted(val_idx)
    # No content on both sides: a duplicate of a report image never tunes the model.
    assert set(ds.hashes[tune]).isdisjoint(set(ds.hashes[report]))
    for label in (0, 1):
        for cat in range(len(CATEGORIES)):
            n_val = int(((ds.labels[val_idx] == label) & (ds.categories[val_idx] == cat)).sum())
            n_rep = int(((ds.labels[report] == label) & (ds.categories[report] == cat)).sum())
            assert abs(n_rep - n_val / 2) <= 1 + 6, (label, cat, n_val, n_rep)  # duplicates move in groups
    again = split_report(ds, val_idx, 0.5, seed=0)
    assert np.array_equal(again[1], report)
    assert not np.array_equal(split_report(ds, val_idx, 0.5, seed=1)[1], report)


def _cfg(data: Path, out: Path, version: str) -> TrainConfig:
    """One tiny epoch with a report split of half the validation split."""
    return TrainConfig(
        data=str(data),
        arch="fastnet_s",
        out=str(out),
        epochs=1,
        batch_size=32,
        val_fraction=0.3,
        report_fraction=0.5,
        progress=False,
        version=version,
    )


def test_training_never_sees_the_report_part(data: Path, tmp_path: Path) -> None:
    cfg = _cfg(data, tmp_path / "run", "r1")
    ds, train_part, val_part = prepare_data(cfg)
    meta = read_meta(train(cfg).weights)
    assert meta.split == {"val_fraction": 0.3, "seed": 0, "report_fraction": 0.5}
    report = load_eval_split(str(data), "report", meta)
    tuned = load_eval_split(str(data), "val", meta)
    assert sorted(tuned.names) == sorted(val_part.names)  # evaluate's val is what training tuned on
    assert set(report.names).isdisjoint(tuned.names)
    assert set(report.names).isdisjoint(train_part.names)
    assert len(report) + len(tuned) == len(split_train_val(ds, 0.3, 0)[1])


def test_an_older_model_needs_an_explicit_fraction(data: Path) -> None:
    meta = ModelMeta(arch="fastnet_s", split={"val_fraction": 0.3, "seed": 0}, version="v3-like")
    with pytest.raises(ValueError, match="--report-fraction"):
        load_eval_split(str(data), "report", meta)
    report = load_eval_split(str(data), "report", meta, report_fraction=0.5)
    tuned = load_eval_split(str(data), "val", meta, report_fraction=0.5)
    whole = load_eval_split(str(data), "val", meta)
    assert sorted([*report.names, *tuned.names]) == sorted(whole.names)
    trained = ModelMeta(arch="fastnet_s", split={"val_fraction": 0.3, "seed": 0, "report_fraction": 0.5})
    with pytest.raises(ValueError, match=r"not 0\.4"):
        load_eval_split(str(data), "report", trained, report_fraction=0.4)


def test_report_split_command_writes_the_figures_with_the_machine(data: Path, tmp_path: Path) -> None:
    from harness.report_split import main as report_main

    weights = train(_cfg(data, tmp_path / "run", "r2")).weights
    out = tmp_path / "report_split.json"
    assert (
        report_main(["--data", str(data), "--weights", str(weights), "--out", str(out), "--threads", "1"])
        == 0
    )
    doc = json.loads(out.read_text())
    assert doc["split"] == "report" and "machine" in doc
    assert 0.0 <= doc["accuracy_at_0.5"] <= 1.0 and doc["threshold"] == read_meta(weights).threshold
    n_report = len(load_eval_split(str(data), "report", read_meta(weights)))
    assert doc["counts"]["n"] == n_report
