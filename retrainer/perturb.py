"""Deterministic perturbations for the robustness report, applied to uint8 NHWC images."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.functional import gaussian_blur

from retrainer.augment import jpeg_roundtrip

Perturbation = Callable[[np.ndarray], np.ndarray]


def jpeg(quality: int) -> Perturbation:
    def apply(images: np.ndarray) -> np.ndarray:
        return np.stack([jpeg_roundtrip(im, quality) for im in images]) if len(images) else images

    return apply


def blur(sigma: float) -> Perturbation:
    """Gaussian blur with a kernel of 2 * ceil(3 sigma) + 1 taps, reflect padding at the borders."""
    k = 2 * math.ceil(3 * sigma) + 1

    def apply(images: np.ndarray) -> np.ndarray:
        if not len(images):
            return images
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
        y = gaussian_blur(x, [k, k], [sigma, sigma])
        return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()

    return apply


def down_up(factor: int = 2) -> Perturbation:
    """Downscale by ``factor`` (bilinear, antialiased) and back up (bilinear): a typical re-upload resize."""

    def one(im: np.ndarray) -> np.ndarray:
        h, w = im.shape[:2]
        small = Image.fromarray(im).resize((w // factor, h // factor), Image.Resampling.BILINEAR)
        return np.asarray(small.resize((w, h), Image.Resampling.BILINEAR), dtype=np.uint8)

    def apply(images: np.ndarray) -> np.ndarray:
        return np.stack([one(im) for im in images]) if len(images) else images

    return apply


def hflip(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(images[:, :, ::-1])


PERTURBATIONS: dict[str, Perturbation] = {
    "jpeg_q50": jpeg(50),
    "jpeg_q30": jpeg(30),
    "blur_sigma0.5": blur(0.5),
    "blur_sigma1.0": blur(1.0),
    "resize_down_up_2x": down_up(2),
    "hflip": hflip,
}
