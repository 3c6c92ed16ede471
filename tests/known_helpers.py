"""Pictures with structure (PDQ needs some: noise hashes are fragile, flat colours featureless) and the
re-uploads a platform sees of them."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, PngImagePlugin


def picture(seed: int, size: int = 32) -> Image.Image:
    """A smooth background with a few shapes: PDQ quality well above 50, distinct seeds far apart."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x0, y0 = (int(v) for v in rng.integers(0, size - 8, 2))
        w, h = (int(v) for v in rng.integers(4, size // 2, 2))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse([x0, y0, x0 + w, y0 + h], fill=fill)
    return img


def encode(img: Image.Image, fmt: str = "JPEG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def recompressed(img: Image.Image, size: int = 64, quality: int = 50) -> bytes:
    """What a platform typically gets back: resized and recompressed."""
    return encode(img.resize((size, size), Image.Resampling.BICUBIC), "JPEG", quality=quality)


def mirrored(img: Image.Image) -> bytes:
    return encode(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "JPEG", quality=90)


def png_with_parameters(img: Image.Image, seed: int = 1) -> bytes:
    """A PNG as Automatic1111 writes it: generation parameters in a ``parameters`` text chunk (``seed``
    changes the bytes, not the pixels)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", f"a photo of a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: {seed}")
    return encode(img, "PNG", pnginfo=info)


def smooth_image(seed: int, h: int = 45, w: int = 70) -> np.ndarray:
    """A natural-looking RGB image (low-frequency waves and blobs, no noise), off the 64 px grid."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.zeros((h, w, 3))
    for _ in range(6):
        fx, fy = rng.uniform(0.5, 3, 2)
        img += rng.uniform(20, 60, 3) * np.sin(2 * np.pi * (fx * x + fy * y) + rng.uniform(0, 6.3))[..., None]
    for _ in range(3):
        cx, cy = rng.uniform(0.2, 0.8, 2)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / rng.uniform(0.05, 0.2) ** 2)
        img += rng.uniform(-80, 80, 3) * blob[..., None]
    img -= img.min()
    return (img / img.max() * 255).astype(np.uint8)
