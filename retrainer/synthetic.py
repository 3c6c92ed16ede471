"""A tiny synthetic dataset in the CIFAKE layout, for tests and for trying the CLIs without the download.

REAL images are smooth colour gradients plus camera-like noise; FAKE images are the same without noise and
with a faint periodic pattern, so that a model can learn the difference in a few steps. Names follow the
CIFAKE scheme (``"12 (3).jpg"`` is category 2, bird).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def _image(rng: np.random.Generator, fake: bool, size: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([c0 + c1 * xx + c2 * yy for c0, c1, c2 in rng.uniform(0.1, 0.5, (3, 3))], axis=-1)
    if fake:
        pattern = 0.08 * np.sin(np.pi * xx * size / 2)[..., None]
        img = base + pattern
    else:
        img = base + rng.normal(0, 0.08, base.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _jpeg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=75)
    return buf.getvalue()


def make_synthetic_cifake(
    root: Path,
    n_per_class: int = 40,
    splits: tuple[str, ...] = ("train",),
    as_zip: bool = False,
    n_corrupt: int = 0,
    n_duplicates: int = 0,
    seed: int = 0,
) -> Path:
    """Write the layout under ``root`` (a folder, or ``root`` itself as a zip); returns the path to use.

    ``n_corrupt`` FAKE files in ``train`` are garbage; ``n_duplicates`` extra FAKE files in ``train``
    are byte-identical copies of existing ones (as in the real archive).
    """
    rng = np.random.default_rng(seed)
    files: dict[str, bytes] = {}
    for split in splits:
        for cls in ("REAL", "FAKE"):
            for i in range(n_per_class):
                cat = i % 10
                suffix = "" if cat == 0 else f" ({cat + 1})"
                files[f"{split}/{cls}/{1000 + i}{suffix}.jpg"] = _jpeg(_image(rng, cls == "FAKE"))
        if split == "train":
            fakes = [k for k in files if k.startswith("train/FAKE/")]
            for j in range(n_duplicates):
                files[f"train/FAKE/{9000 + j} (3).jpg"] = files[fakes[j % len(fakes)]]
            for j in range(n_corrupt):
                files[f"train/FAKE/{9500 + j} (7).jpg"] = b"\xff\xd8\xff\xe0 this is not a jpeg"
    if as_zip:
        root.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(root, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, data in files.items():
                zf.writestr(name, data)
        return root
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root
