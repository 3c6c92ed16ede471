"""Training augmentation on uint8 tensors, chosen not to erase the generator's traces.

What we use and why:
- horizontal flip and small integer translations (reflect padding): they move content but keep every pixel's
  high-frequency neighbourhood intact;
- JPEG re-encoding at a random quality, drawn from a bank encoded once per run (PIL per sample in the loop
  would cost more than the forward pass of the small models on 2 CPU cores). It teaches robustness to the
  re-compression every upload goes through, which is the perturbation platforms apply most.
What we avoid: blur, resizing and colour jitter, which erase or mimic exactly the high-frequency differences
between camera photos and downscaled diffusion outputs.
"""

from __future__ import annotations

import io
import logging

import numpy as np
import torch
from PIL import Image

logger = logging.getLogger(__name__)


def jpeg_roundtrip(img: np.ndarray, quality: int) -> np.ndarray:
    """Encode one uint8 HWC RGB image as JPEG (4:2:0, like the dataset) and decode it again."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def jpeg_bank(images: np.ndarray, q_min: int, q_max: int, seed: int) -> np.ndarray:
    """A re-encoded copy of ``images`` (uint8 NHWC), each at a quality drawn uniformly from [q_min, q_max]."""
    rng = np.random.default_rng(seed)
    qualities = rng.integers(q_min, q_max + 1, size=len(images))
    out = np.empty_like(images)
    for i in range(len(images)):
        out[i] = jpeg_roundtrip(images[i], int(qualities[i]))
    return out


def random_flip_translate(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Per-sample horizontal flip (p = 0.5) and translation by up to ``max_shift`` px, on NCHW tensors."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    if max_shift <= 0:
        return x
    p = max_shift
    xp = torch.nn.functional.pad(x, (p, p, p, p), mode="reflect")
    dy = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    out = torch.empty_like(x)
    # One slice copy per distinct offset: (2p+1)^2 cheap copies instead of a 4-D gather index per pixel.
    for oy in range(2 * p + 1):
        for ox in range(2 * p + 1):
            sel = torch.nonzero((dy == oy) & (dx == ox)).flatten()
            if len(sel):
                out[sel] = xp[sel, :, oy : oy + h, ox : ox + w]
    return out
