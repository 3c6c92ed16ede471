"""The images ``python -m harness.demo`` streams, and what may honestly be claimed about them.

- a CIFAKE archive (zip or folder, ``train/REAL``, ``train/FAKE``): the images are drawn, half REAL and
  half FAKE, from the validation split the model never trained on, reproduced from the model's metadata
  (split seed and fraction, data fingerprint) with the training's own :func:`retrainer.data.split_train_val`.
  An archive other than the one the model was trained on is refused: its split would not be held out;
- any other folder or zip of images: a random sample, with an accuracy (not a held-out one) only when the
  folder names say REAL or FAKE;
- generated noise images: no true label, no accuracy.
"""

from __future__ import annotations

import hashlib
import io
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from retrainer.data import (
    CifakeSplit,
    LayoutError,
    dedup_index,
    load_split,
    split_report,
    split_train_val,
)
from scorer.drift import reference_from_metrics
from scorer.weights import ModelMeta

Sample = tuple[str, bytes, str | None]  # (name, bytes, true label or None)


@dataclass(frozen=True)
class DemoSet:
    """The images the demo streams, and what may honestly be claimed about them."""

    samples: list[Sample]
    described: str  # for the "demo: using ..." line
    # For images from the model's validation split: what they are, for the accuracy line
    # ("validation images the model never trained on (split seed 0, ...)"); None otherwise.
    held_out: str | None = None


@dataclass(frozen=True)
class HeldOut:
    """The model's train/validation split reproduced over an archive."""

    ds: CifakeSplit
    train_idx: np.ndarray
    val_idx: np.ndarray
    seed: int
    val_fraction: float


def _truth(name: str) -> str | None:
    parts = name.replace("\\", "/").split("/")
    for label in ("REAL", "FAKE"):
        if label in parts:
            return label.lower()
    return None


def load_samples(data: str | None, n: int, seed: int, meta: ModelMeta) -> DemoSet:
    """``n`` images to stream: held-out validation images from a CIFAKE archive (see the module docstring),
    a random sample of any other folder or zip of images, or generated ones without ``data``."""
    if data and not (Path(data).is_dir() or zipfile.is_zipfile(data)):
        raise SystemExit(f"--data {data}: not a zip or a folder")
    if data:
        try:
            split = reproduce_split(data, meta)
        except LayoutError:
            return _any_images(data, n, seed)
        return validation_samples(data, split, n, seed, meta)
    imgs = generated_images(n, seed)
    return DemoSet(
        [(f"generated-{i:04d}.jpg", b, None) for i, b in enumerate(imgs)],
        f"{n} generated noise images (no dataset given: pass --data PATH or put the CIFAKE zip at "
        "../shared/datasets/cifake-train.zip for real photos and fakes)",
    )


def reproduce_split(data: str, meta: ModelMeta) -> HeldOut:
    """The model's train/validation split of ``data``'s ``train`` images, as its training made it.

    Same loader (:func:`retrainer.data.load_split`, cached after the first decode) and same split function
    (:func:`retrainer.data.split_train_val`) with the seed and fraction from the metadata. Refuses
    (``SystemExit``) when the metadata records no split, or when ``data`` is not the archive the model was
    trained on (another fingerprint, another validation count): a split of other data is not held out.
    Raises :class:`LayoutError` when ``data`` is not in the CIFAKE layout.
    """
    ds = load_split(data, "train")  # first: LayoutError for any other folder or zip of images
    who = meta.version or "the model"
    if "seed" not in meta.split or "val_fraction" not in meta.split:
        raise SystemExit(
            f"demo: {who}'s metadata records no validation split (seed and val_fraction; it has "
            f"{meta.split or 'none'}), so the images it never trained on cannot be reproduced"
        )
    seed, frac = int(meta.split["seed"]), float(meta.split["val_fraction"])
    if not meta.data_fingerprint:
        print(
            f"demo: {who}'s metadata has no data fingerprint: {data} is not checked against its training data"
        )
    elif ds.fingerprint != meta.data_fingerprint:
        trained_on = f" ({meta.train_config['data']})" if meta.train_config.get("data") else ""
        raise SystemExit(
            f"demo: {data} is not the archive {who} was trained on (fingerprint {ds.fingerprint}, the "
            f"model's {meta.data_fingerprint}; the fingerprint covers file names, sizes and CRCs for a zip, "
            "sizes and modification times for a folder), so its validation split cannot be reproduced "
            f"and the images might have been trained on. Pass the archive it was trained on{trained_on}, "
            "or no --data for generated images."
        )
    train_idx, val_idx = split_train_val(ds, frac, seed)
    # The split is by content: no image of the validation side may have a copy on the training side.
    assert not np.intersect1d(train_idx, val_idx).size, "train and validation indices overlap"
    assert not np.isin(ds.hashes[val_idx], ds.hashes[train_idx]).any(), "a validation image is in train"
    expected = validation_count(meta)
    tuned = tuning_count(ds, val_idx, meta)
    if expected is not None and expected != tuned:
        raise SystemExit(
            f"demo: the split of {data} has {tuned} validation images to tune on, {who}'s metadata "
            f"{expected}: not the split the model was validated on"
        )
    return HeldOut(ds, train_idx, val_idx, seed, frac)


def tuning_count(ds: CifakeSplit, val_idx: np.ndarray, meta: ModelMeta) -> int:
    """How many of the validation images training tuned on: all of them, or, for a model trained with a
    final-report split, the part of them left after carving it (both parts are held out of training)."""
    fraction = float(meta.split.get("report_fraction", 0.0))
    if not fraction:
        return len(val_idx)
    tune_idx, _ = split_report(ds, val_idx, fraction, int(meta.split["seed"]))
    return len(tune_idx)


def validation_count(meta: ModelMeta) -> int | None:
    """The number of validation images recorded in the metadata (its validation p_fake histogram, written by
    the training over the whole split), or None when unknown. A fine-tuned model's histogram covers a
    subsample of its base's split, so it says nothing about the split's size."""
    if meta.parent_version:
        return None
    counts = reference_from_metrics(meta.metrics)
    return None if counts is None else round(float(counts.sum()))


def pick_validation(split: HeldOut, n: int, seed: int) -> np.ndarray:
    """Indices into ``split.ds`` of ``n`` validation images, half REAL and half FAKE, distinct contents
    (each image is submitted under its sha256), seeded; sorted."""
    ds = split.ds
    distinct = split.val_idx[dedup_index(ds.hashes[split.val_idx])]
    rng = np.random.default_rng(seed)
    picked = []
    for label, k in ((0, n // 2), (1, n - n // 2)):
        pool = distinct[ds.labels[distinct] == label]
        picked.append(rng.choice(pool, size=min(k, len(pool)), replace=False))
    out = np.sort(np.concatenate(picked))
    assert np.isin(out, split.val_idx).all() and not np.isin(ds.hashes[out], ds.hashes[split.train_idx]).any()
    return out


def validation_samples(data: str, split: HeldOut, n: int, seed: int, meta: ModelMeta) -> DemoSet:
    """The file bytes of :func:`pick_validation`'s images, checked against the hashes the split used."""
    ds = split.ds
    idx = pick_validation(split, n, seed)
    names = [str(ds.names[i]) for i in idx]
    samples: list[Sample] = []
    for i, name, raw in zip(idx, names, _read_members(Path(data), names), strict=True):
        # Through an "S32" array, as the loader stored it (numpy drops a digest's trailing NUL bytes).
        if np.array([hashlib.sha256(raw).digest()], "S32")[0] != ds.hashes[i]:
            raise SystemExit(f"demo: {data}: {name} changed since it was decoded; run the demo again")
        samples.append((name, raw, "fake" if ds.labels[i] else "real"))
    n_real = sum(s[2] == "real" for s in samples)
    who = meta.version or "the model"
    how = f"split seed {split.seed}, val_fraction {split.val_fraction} from {who}'s metadata"
    what = f"validation images the model never trained on ({how}; sample seed {seed})"
    if meta.parent_version:
        # A fine-tuned model keeps its base's split, but the moderators' labels it learnt from may
        # include some of these images.
        what = (
            f"validation images of base model {meta.parent_version}'s split ({how}; sample seed {seed};"
            " the moderators' labels this model was fine-tuned on may include some of them)"
        )
    counts = f"{n_real} REAL, {len(samples) - n_real} FAKE, of the {len(split.val_idx)} in the split"
    return DemoSet(
        samples,
        f"{len(samples)} {what} from {data} (data fingerprint {ds.fingerprint}; {counts})",
        held_out=what,
    )


def _read_members(root: Path, names: list[str]) -> list[bytes]:
    """The bytes of ``names`` (paths as :func:`load_split` records them: below the archive's optional
    top-level folder) from a CIFAKE zip or folder."""
    if not names:
        return []
    if zipfile.is_zipfile(root):
        with zipfile.ZipFile(root) as zf:
            prefix = _prefix(zf.namelist(), names[0])
            return [zf.read(prefix + nm) for nm in names]
    tops = [root, *sorted(d for d in root.iterdir() if d.is_dir())]
    base = next((d for d in tops if (d / names[0]).is_file()), root)
    return [(base / nm).read_bytes() for nm in names]


def _prefix(listing: list[str], name: str) -> str:
    for full in listing:
        head = full[: len(full) - len(name)]
        if full.endswith(name) and (head == "" or (head.endswith("/") and head.count("/") == 1)):
            return head
    raise SystemExit(f"demo: {name} is not in the archive")


def _any_images(data: str, n: int, seed: int) -> DemoSet:
    """A random sample of a folder or zip that is not a CIFAKE archive: nothing is known about whether the
    model saw these images, so no held-out claim."""
    rng = random.Random(seed)
    note = f"from {data} (not a CIFAKE archive: not checked against the model's training data)"
    if zipfile.is_zipfile(data):
        with zipfile.ZipFile(data) as zf:
            names = [
                i.filename for i in zf.infolist() if i.filename.lower().endswith((".jpg", ".jpeg", ".png"))
            ]
            picked = rng.sample(names, min(n, len(names)))
            return DemoSet(
                [(nm, zf.read(nm), _truth(nm)) for nm in picked], f"{len(picked)} random images {note}"
            )
    files = sorted(p for p in Path(data).rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"})
    chosen = rng.sample(files, min(n, len(files)))
    return DemoSet(
        [(str(f), f.read_bytes(), _truth(str(f))) for f in chosen], f"{len(chosen)} random images {note}"
    )


def generated_images(n: int, seed: int) -> list[bytes]:
    """``n`` distinct 32x32 noise JPEGs (distinct bytes, so distinct sha256 image ids)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=75)
        out.append(buf.getvalue())
    return out
