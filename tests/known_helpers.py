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
