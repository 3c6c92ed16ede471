"""CIFAKE loader, cache, de-duplication and the leak-free stratified split."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrainer.data import (
    CifakeSplit,
    LayoutError,
    category_from_name,
    dedup_index,
    load_split,
    split_train_val,
)
from retrainer.synthetic import make_synthetic_cifake


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFAKE_CACHE_DIR", str(tmp_path / "cache"))


def test_category_from_name() -> None:
    assert category_from_name("train/FAKE/1234 (6).jpg") == 5
    assert category_from_name("train/REAL/0001.jpg") == 0
    assert category_from_name("train/REAL/0001 (10).jpg") == 9
    with pytest.raises(LayoutError):
        category_from_name("train/REAL/0001 (11).jpg")


@pytest.mark.parametrize("as_zip", [False, True], ids=["folder", "zip"])
def test_loader_counts_labels_corrupt_and_duplicates(
    tmp_path: Path, as_zip: bool, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / ("cifake.zip" if as_zip else "cifake")
    src = make_synthetic_cifake(root, n_per_class=20, as_zip=as_zip, n_corrupt=2, n_duplicates=3)
    with caplog.at_level(logging.WARNING, logger="retrainer.data"):
        ds = load_split(src, "train")
    assert len(ds) == 20 + 20 + 3  # the two corrupt files are skipped
    assert ds.n_corrupt == 2
    # Only this loader's records: a Kafka client left by an earlier test may log from its own thread.
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "retrainer.data"]
    assert len(warnings) == 1 and "2 unreadable" in warnings[0].getMessage()
    assert ds.images.shape == (43, 32, 32, 3) and ds.images.dtype == np.uint8
    assert (ds.labels == 0).sum() == 20 and (ds.labels == 1).sum() == 23
    assert set(ds.categories.tolist()) == set(range(10))
    assert len(dedup_index(ds.hashes)) == 40  # the 3 copies share their original's hash


def test_cache_is_reused_and_keyed_by_content(tmp_path: Path) -> None:
    src = make_synthetic_cifake(tmp_path / "d", n_per_class=10)
    first = load_split(src, "train")
    cached = list((tmp_path / "cache" / "data").glob("*.npz"))
    assert len(cached) == 1
    again = load_split(src, "train")
    assert again.fingerprint == first.fingerprint
    assert np.array_equal(again.images, first.images) and np.array_equal(again.names, first.names)
    other = make_synthetic_cifake(tmp_path / "e", n_per_class=10, seed=1)
    assert load_split(other, "train").fingerprint != first.fingerprint


def test_zip_inside_one_folder_is_accepted(tmp_path: Path) -> None:
    src = make_synthetic_cifake(tmp_path / "d", n_per_class=5)
    zpath = tmp_path / "nested.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in src.rglob("*.jpg"):
            zf.write(p, "cifake/" + p.relative_to(src).as_posix())
    assert len(load_split(zpath, "train")) == 10


def test_wrong_layout_says_what_was_expected(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
    with pytest.raises(LayoutError, match="train/REAL"):
        load_split(tmp_path / "photos", "train")
    src = make_synthetic_cifake(tmp_path / "d", n_per_class=5)
    with pytest.raises(LayoutError, match="test"):
        load_split(src, "test")


def _split_fixture(hashes: list[int], labels: list[int], cats: list[int]) -> CifakeSplit:
    n = len(hashes)
    return CifakeSplit(
        images=np.zeros((n, 32, 32, 3), np.uint8),
        labels=np.array(labels, np.int64),
        categories=np.array(cats, np.int64),
        hashes=np.array([h.to_bytes(32, "big") for h in hashes], "S32"),
        names=np.array([str(i) for i in range(n)]),
        fingerprint="x",
    )


def test_split_keeps_duplicates_on_one_side_real_layout(tmp_path: Path) -> None:
    src = make_synthetic_cifake(tmp_path / "d", n_per_class=60, n_duplicates=30)
    ds = load_split(src, "train")
    tr, va = split_train_val(ds, 0.2, seed=3)
    assert len(np.intersect1d(ds.hashes[tr], ds.hashes[va])) == 0
    assert len(tr) + len(va) == len(ds)
    assert abs(len(va) - 0.2 * len(dedup_index(ds.hashes))) <= 20  # rounding per stratum


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 40), min_size=5, max_size=200),
    st.floats(0.05, 0.5),
    st.integers(0, 2**16),
)
def test_split_property_no_hash_on_both_sides(hash_ids: list[int], frac: float, seed: int) -> None:
    # The label/category come from the content, as in the real data (copies are byte-identical).
    ds = _split_fixture(hash_ids, [h % 2 for h in hash_ids], [(h // 2) % 10 for h in hash_ids])
    tr, va = split_train_val(ds, frac, seed)
    assert len(np.intersect1d(ds.hashes[tr], ds.hashes[va])) == 0
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(len(hash_ids)))


def test_split_is_stratified_and_seeded() -> None:
    n = 2000
    ds = _split_fixture(list(range(n)), [i % 2 for i in range(n)], [(i // 2) % 10 for i in range(n)])
    _, va = split_train_val(ds, 0.1, seed=0)
    assert len(va) == 200
    for lab in (0, 1):
        for cat in range(10):
            assert ((ds.labels[va] == lab) & (ds.categories[va] == cat)).sum() == 10
    assert np.array_equal(split_train_val(ds, 0.1, seed=0)[1], va)
    assert not np.array_equal(split_train_val(ds, 0.1, seed=1)[1], va)
