"""The demo's images: drawn from the validation split the model never trained on, reproduced from its
metadata; refused for another archive; the accuracy line says what it rests on (no stack needed)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from harness.demo import accuracy_lines
from harness.demo_samples import (
    DemoSet,
    Sample,
    load_samples,
    reproduce_split,
    tuning_count,
    validation_count,
)
from retrainer.data import load_split, split_report, split_train_val
from retrainer.synthetic import make_synthetic_cifake
from scorer.drift import reference_histogram
from scorer.weights import DEFAULT_WEIGHTS, ModelMeta, read_meta

REAL_ZIP = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "cifake-train.zip"


@pytest.fixture
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFAKE_CACHE_DIR", str(tmp_path / "cache"))


def _meta(data: Path, **kw: object) -> ModelMeta:
    fields: dict[str, object] = {
        "arch": "fastnet",
        "version": "demo-test-v1",
        "data_fingerprint": load_split(data, "train").fingerprint,
        "split": {"seed": 3, "val_fraction": 0.25},
    }
    return ModelMeta(**(fields | kw))  # type: ignore[arg-type]


@pytest.mark.usefixtures("_private_cache")
@pytest.mark.parametrize("layout", ["zip", "folder", "nested folder"])
def test_picked_images_are_validation_images_never_training_ones(tmp_path: Path, layout: str) -> None:
    root = {"zip": tmp_path / "c.zip", "folder": tmp_path / "c", "nested folder": tmp_path / "n" / "cifake"}
    data = make_synthetic_cifake(root[layout], n_per_class=40, as_zip=layout == "zip", n_duplicates=6)
    if layout == "nested folder":
        data = data.parent  # the layout inside one top-level folder
    meta = _meta(data)
    got = load_samples(str(data), 12, seed=5, meta=meta)

    # The split as the training made it, independently of the demo.
    ds = load_split(data, "train")
    train_idx, val_idx = split_train_val(ds, 0.25, 3)
    val_names, train_names = set(ds.names[val_idx]), set(ds.names[train_idx])
    train_hashes = {bytes(h) for h in ds.hashes[train_idx]}
    names = [name for name, _b, _t in got.samples]
    assert len(got.samples) == 12 and len(set(names)) == 12
    assert set(names) <= val_names and not set(names) & train_names
    assert not {hashlib.sha256(b).digest().rstrip(b"\0") for _n, b, _t in got.samples} & train_hashes
    assert len({b for _n, b, _t in got.samples}) == 12  # distinct contents: distinct image ids
    truths = [t for _n, _b, t in got.samples]
    assert truths.count("real") == 6 and truths.count("fake") == 6
    assert all(t == ("fake" if "/FAKE/" in n else "real") for n, _b, t in got.samples)
    assert got.held_out is not None and "never trained on" in got.held_out and "seed 3" in got.held_out
    # Seeded: the same images again.
    assert [s[0] for s in load_samples(str(data), 12, seed=5, meta=meta).samples] == names


@pytest.mark.usefixtures("_private_cache")
def test_the_count_in_the_metadata_is_checked(tmp_path: Path) -> None:
    data = make_synthetic_cifake(tmp_path / "c.zip", n_per_class=40, as_zip=True)
    n_val = len(split_train_val(load_split(data, "train"), 0.25, 3)[1])
    right = _meta(data, metrics={"val_pfake_hist": reference_histogram(np.full(n_val, 0.5))})
    assert validation_count(right) == n_val
    assert len(reproduce_split(str(data), right).val_idx) == n_val
    wrong = _meta(data, metrics={"val_pfake_hist": reference_histogram(np.full(n_val + 1, 0.5))})
    with pytest.raises(SystemExit, match=f"has {n_val} validation images to tune on"):
        reproduce_split(str(data), wrong)
    # A model trained with a final-report split tuned on what is left of it (v4); both parts are held out.
    big = make_synthetic_cifake(tmp_path / "big.zip", n_per_class=200, as_zip=True)
    ds = load_split(big, "train")
    val = split_train_val(ds, 0.25, 3)[1]
    n_tune = len(split_report(ds, val, 0.5, 3)[0])
    assert 0 < n_tune < len(val)
    carved = {"seed": 3, "val_fraction": 0.25, "report_fraction": 0.5}
    hist = {"val_pfake_hist": reference_histogram(np.full(n_tune, 0.5))}
    assert len(reproduce_split(str(big), _meta(big, split=carved, metrics=hist)).val_idx) == len(val)
    everything = {"val_pfake_hist": reference_histogram(np.full(len(val), 0.5))}
    with pytest.raises(SystemExit, match=f"has {n_tune} validation images to tune on"):
        reproduce_split(str(big), _meta(big, split=carved, metrics=everything))
    # A fine-tuned model's histogram covers a subsample of its base's split: no count to check.
    assert validation_count(_meta(data, parent_version="base", metrics=wrong.metrics)) is None


@pytest.mark.usefixtures("_private_cache")
def test_another_archive_or_no_recorded_split_is_refused(tmp_path: Path) -> None:
    data = make_synthetic_cifake(tmp_path / "c.zip", n_per_class=40, as_zip=True)
    other = make_synthetic_cifake(tmp_path / "other.zip", n_per_class=40, as_zip=True, seed=1)
    with pytest.raises(SystemExit, match="not the archive demo-test-v1 was trained on"):
        load_samples(str(other), 10, seed=5, meta=_meta(data))
    with pytest.raises(SystemExit, match="records no validation split"):
        load_samples(str(data), 10, seed=5, meta=_meta(data, split={}))


@pytest.mark.usefixtures("_private_cache")
def test_other_images_and_generated_ones_claim_no_held_out_accuracy(tmp_path: Path) -> None:
    folder = make_synthetic_cifake(tmp_path / "x", n_per_class=5)
    (folder / "train").rename(folder / "mine")  # not the CIFAKE layout any more
    meta = ModelMeta(arch="fastnet", version="v")
    other = load_samples(str(folder), 4, seed=1, meta=meta)
    assert other.held_out is None and len(other.samples) == 4 and "not a CIFAKE archive" in other.described
    generated = load_samples(None, 3, seed=1, meta=meta)
    assert generated.held_out is None and "generated" in generated.described
    ids = {f"g{i}": s for i, s in enumerate(generated.samples)}
    rows = [(i, "v", 0.9, "fake") for i in ids]
    assert accuracy_lines(rows, ids, "v", 0.5, generated) == [
        "accuracy: not measured (these images have no true label)"
    ]


def test_accuracy_line_counts_the_models_verdicts_at_its_threshold() -> None:
    truth = ["fake", "fake", "real", "real", "fake"]
    ids: dict[str, Sample] = {f"i{k}": (f"train/X/{k}.jpg", b"", t) for k, t in enumerate(truth)}
    rows = [
        ("i0", "v1", 0.95, "fake"),
        ("i1", "v1", 0.42, "uncertain"),  # right at threshold 0.39, undecided as a verdict
        ("i2", "v1", 0.10, "real"),
        ("i3", "v1", 0.60, "fake"),  # wrong
        ("i4", "v2", 0.99, "fake"),  # another model: not counted
    ]
    held = DemoSet([], "", held_out="validation images the model never trained on (split seed 0)")
    lines = accuracy_lines(rows, ids, "v1", 0.39, held)
    assert lines[0] == "1 verdict(s) came from another model than v1: not counted"
    assert lines[1] == (
        "accuracy 75.0% on 4 validation images the model never trained on (split seed 0);"
        " p_fake >= 0.39 is fake"
    )
    assert lines[2] == "verdict labels: 66.7% right on the 3 decided, 1 uncertain (p_fake near the threshold)"


@pytest.mark.skipif(not REAL_ZIP.exists(), reason="../shared/datasets/cifake-train.zip not present")
def test_real_archive_reproduces_the_shipped_models_validation_split() -> None:
    # The normal decode cache: the first run ever decodes the 100k JPEGs (~1 min on 2 cores).
    meta = read_meta(DEFAULT_WEIGHTS)
    split = reproduce_split(str(REAL_ZIP), meta)
    assert split.ds.fingerprint == meta.data_fingerprint
    assert len(split.val_idx) == 10_000
    # v4 tuned on the part of them left after carving its final-report split.
    assert validation_count(meta) == tuning_count(split.ds, split.val_idx, meta)
    assert len(split.train_idx) + len(split.val_idx) == len(split.ds)
