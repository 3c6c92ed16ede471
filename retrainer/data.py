"""CIFAKE data: read the public layout (folder or zip), decode once, cache, de-duplicate, split.

Layout expected under the source root (or under one top-level folder of it)::

    train/REAL/*.jpg   train/FAKE/*.jpg   [test/REAL/*.jpg   test/FAKE/*.jpg]

Labels come from the folder (REAL = 0, FAKE = 1); the CIFAR-10 category from the file-name suffix
(``"1234 (6).jpg"`` is category 5, dog; no suffix is category 0, airplane).

Decoded arrays are cached as ``.npz`` (no pickle) under ``$CIFAKE_CACHE_DIR`` (default
``$XDG_CACHE_HOME/cifake-screen`` or ``~/.cache/cifake-screen``) in ``data/``, keyed by a fingerprint of the
source listing, so a changed file or a different download gets its own cache entry.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from scorer.preprocess import to_model_rgb

logger = logging.getLogger(__name__)

CATEGORIES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
LABELS = {"REAL": 0, "FAKE": 1}
IMAGE_SIZE = 32
# Bump when the decoding or the cached fields change, so stale caches are not reused.
LOADER_VERSION = 1
_SUFFIX = re.compile(r"\((\d+)\)\s*$")
_EXTS = (".jpg", ".jpeg", ".png")


class LayoutError(ValueError):
    """The source does not look like the CIFAKE archive."""


@dataclass
class CifakeSplit:
    """One decoded split. All arrays share the first axis."""

    images: np.ndarray  # uint8 [N, 32, 32, 3], RGB
    labels: np.ndarray  # int64 [N], 0 = real, 1 = fake
    categories: np.ndarray  # int64 [N], CIFAR-10 class index
    hashes: np.ndarray  # "S32" [N], sha256 digest of the file bytes (byte-identical duplicates share it)
    names: np.ndarray  # str [N], path inside the source
    fingerprint: str  # fingerprint of the source split this was decoded from
    n_corrupt: int = 0

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> CifakeSplit:
        return CifakeSplit(
            self.images[idx],
            self.labels[idx],
            self.categories[idx],
            self.hashes[idx],
            self.names[idx],
            self.fingerprint,
            0,
        )


def category_from_name(name: str) -> int:
    """CIFAR-10 category from a CIFAKE file name: no suffix = 0 (airplane), ``(k)`` = k - 1."""
    stem = name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    m = _SUFFIX.search(stem)
    if m is None:
        return 0
    k = int(m.group(1))
    if not 2 <= k <= 10:
        raise LayoutError(f"unexpected category suffix ({k}) in {name!r}; expected (2)..(10) or none")
    return k - 1


def cache_dir() -> Path:
    root = os.environ.get("CIFAKE_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "cifake-screen"


class _Source:
    """Uniform read access to a folder or a zip holding the CIFAKE layout."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        if path.is_file() and zipfile.is_zipfile(path):
            self.zip = zipfile.ZipFile(path)
            all_names = [n for n in self.zip.namelist() if not n.endswith("/")]
        elif path.is_dir():
            all_names = [p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()]
        else:
            raise LayoutError(f"{path}: not a folder or a zip file (expected the CIFAKE archive)")
        self.names = sorted(n for n in all_names if n.lower().endswith(_EXTS) and "__MACOSX" not in n)
        self.prefix = self._find_prefix()

    def _find_prefix(self) -> str:
        for n in self.names:
            m = re.match(r"^(.*?)(train|test)/(REAL|FAKE)/[^/]+$", n)
            if m and m.group(1).count("/") <= 1:
                return m.group(1)
        raise LayoutError(
            f"{self.path}: no images under train/REAL, train/FAKE (or test/...). Expected the CIFAKE layout: "
            "train/REAL/*.jpg, train/FAKE/*.jpg, optionally test/REAL, test/FAKE, at the top level or "
            "inside one folder."
        )

    def split_names(self, split: str) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        for cls, label in LABELS.items():
            head = f"{self.prefix}{split}/{cls}/"
            out.extend((n, label) for n in self.names if n.startswith(head) and "/" not in n[len(head) :])
        if not any(lab == 0 for _, lab in out) or not any(lab == 1 for _, lab in out):
            raise LayoutError(
                f"{self.path}: split {split!r} needs images in both {self.prefix}{split}/REAL/ and "
                f"{self.prefix}{split}/FAKE/"
            )
        return out

    def fingerprint(self, entries: list[tuple[str, int]]) -> str:
        """Hash of the listing with sizes and CRCs (zip) or sizes and mtimes (folder): cheap, content-aware"""
        h = hashlib.sha256(f"cifake-v{LOADER_VERSION}".encode())
        for name, label in entries:
            if self.zip is not None:
                info = self.zip.getinfo(name)
                meta = f"{info.file_size}:{info.CRC}"
            else:
                st = (self.path / name).stat()
                meta = f"{st.st_size}:{st.st_mtime_ns}"
            h.update(f"{name[len(self.prefix) :]}|{label}|{meta}\n".encode())
        return h.hexdigest()[:16]

    def read(self, name: str) -> bytes:
        if self.zip is not None:
            return self.zip.read(name)
        return (self.path / name).read_bytes()

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return np.asarray(to_model_rgb(im, IMAGE_SIZE), dtype=np.uint8)


def _iter_progress(items: list[tuple[str, int]], desc: str) -> Iterator[tuple[str, int]]:
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency, but decoding must not fail for a progress bar
        yield from items
        return
    yield from tqdm(items, desc=desc, unit="img", mininterval=2.0, disable=len(items) < 5000)


def _decode_split(src: _Source, entries: list[tuple[str, int]], fp: str) -> CifakeSplit:
    n = len(entries)
    images = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    labels = np.zeros(n, np.int64)
    cats = np.zeros(n, np.int64)
    hashes = np.zeros(n, "S32")
    keep = np.zeros(n, bool)
    corrupt: list[str] = []
    for i, (name, label) in enumerate(_iter_progress(entries, "decode")):
        try:
            data = src.read(name)
            images[i] = _decode(data)
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            corrupt.append(f"{name}: {exc}")
            continue
        labels[i] = label
        cats[i] = category_from_name(name)
        hashes[i] = hashlib.sha256(data).digest()
        keep[i] = True
    if corrupt:
        # One warning for the lot: a log line per bad file would drown the progress bar.
        logger.warning("skipped %d unreadable image(s), first: %s", len(corrupt), corrupt[0])
    names = np.array([name[len(src.prefix) :] for name, _ in entries], dtype=str)
    return CifakeSplit(images[keep], labels[keep], cats[keep], hashes[keep], names[keep], fp, len(corrupt))


def _save_npz(path: Path, ds: CifakeSplit) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                images=ds.images,
                labels=ds.labels,
                categories=ds.categories,
                hashes=ds.hashes,
                names=ds.names,
                n_corrupt=np.array(ds.n_corrupt),
            )
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_npz(path: Path, fp: str) -> CifakeSplit:
    with np.load(path, allow_pickle=False) as z:
        return CifakeSplit(
            z["images"],
            z["labels"],
            z["categories"],
            z["hashes"],
            z["names"],
            fp,
            int(z["n_corrupt"]),
        )


def load_split(source: str | os.PathLike[str], split: str = "train", use_cache: bool = True) -> CifakeSplit:
    """Decode ``split`` ("train" or "test") of a CIFAKE folder or zip, through the on-disk cache.

    Raises :class:`LayoutError` when the source does not hold that split in the CIFAKE layout.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    src = _Source(Path(source))
    try:
        entries = src.split_names(split)
        fp = src.fingerprint(entries)
        cache = cache_dir() / "data" / f"{fp}-{split}.npz"
        if use_cache and cache.exists():
            try:
                ds = _load_npz(cache, fp)
                logger.info("loaded %d %s images from cache %s", len(ds), split, cache)
                return ds
            except (OSError, ValueError, KeyError) as exc:
                logger.warning("ignoring unreadable cache %s: %s", cache, exc)
        logger.info("decoding %d %s images from %s", len(entries), split, source)
        ds = _decode_split(src, entries, fp)
    finally:
        src.close()
    if use_cache:
        try:
            _save_npz(cache, ds)
        except OSError as exc:  # a read-only cache only costs time
            logger.warning("could not write cache %s: %s", cache, exc)
    return ds


def dedup_index(hashes: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of each distinct content hash, in original order."""
    _, first = np.unique(hashes, return_index=True)
    return np.sort(first)


def split_train_val(
    ds: CifakeSplit, val_fraction: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (label x category) train/validation split over *distinct contents*.

    All copies of a byte-identical file land on the same side, so duplicates cannot leak the validation
    score. Returns ``(train_idx, val_idx)`` into ``ds``; both keep every copy (de-duplicate train with
    :func:`dedup_index` if wanted).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError("val_fraction must be in (0, 1)")
    uniq, first, inverse = np.unique(ds.hashes, return_index=True, return_inverse=True)
    strata = ds.labels[first] * len(CATEGORIES) + ds.categories[first]
    rng = np.random.default_rng(seed)
    is_val_group = np.zeros(len(uniq), bool)
    for s in np.unique(strata):
        groups = np.flatnonzero(strata == s)
        rng.shuffle(groups)
        n_val = round(len(groups) * val_fraction)
        is_val_group[groups[:n_val]] = True
    is_val = is_val_group[inverse]
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def split_report(
    ds: CifakeSplit, val_idx: np.ndarray, report_fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Carve a final-report split out of the validation split: ``(tune_idx, report_idx)`` into ``ds``.

    The tune part is what training may look at (early stopping, temperature, threshold); the report part
    is looked at once, for the figures a model is published with. Stratified and grouped by content like
    :func:`split_train_val` (it is that function on the validation subset, with its own seed stream), so
    a model trained before the report split existed can still be measured on it: its report part lies
    inside its validation split, which it never trained on.
    """
    sub = ds.subset(val_idx)
    tune, report = split_train_val(sub, report_fraction, seed + 1_000_003)
    return val_idx[tune], val_idx[report]
