"""Deletion and insertion curves (Petsiuk et al., RISE, 2018): do the maps point at what drives p_fake?

For each image (FAKE images of the validation split by default) and each order of its pixels, CAM order
(most salient first) or a random permutation:

* deletion: pixels are replaced, in that order, by the dataset mean colour (0 after normalisation) in
  ``steps`` equal chunks; p_fake is measured after each chunk. A faithful map makes p_fake fall fast:
  a smaller area under the curve.
* insertion: start from a blurred copy of the image (Gaussian, sigma ``blur_sigma`` px: the generator's
  high-frequency traces removed) and put the original pixels back in that order. A faithful map makes
  p_fake rise fast: a larger area.

Areas are trapezoids over the removed/inserted fraction in [0, 1], averaged over images. The report holds
both areas for every method and for random order, and the mean curves; the plot draws the curves.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as TF

from explainer.cam import CamExplainer, Method
from scorer.engine import ServingModel
from scorer.preprocess import normalize_uint8

logger = logging.getLogger(__name__)


def _orders(maps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pixel indices (flattened H*W) by decreasing map value; ties broken at random, not by position."""
    flat = maps.reshape(len(maps), -1).astype(np.float64)
    jitter = rng.random(flat.shape) * 1e-9
    return np.argsort(-(flat + jitter), axis=1, kind="stable")


def _random_orders(n: int, pixels: int, rng: np.random.Generator) -> np.ndarray:
    return np.argsort(rng.random((n, pixels)), axis=1)


@torch.inference_mode()
def _curves(
    model: torch.nn.Module,
    x: torch.Tensor,
    start: torch.Tensor,
    orders: np.ndarray,
    steps: int,
    insert: bool,
) -> np.ndarray:
    """p_fake ``[N, steps + 1]``: ``x`` with its first k/steps pixels (by ``orders``) taken from ``start``
    (deletion), or ``start`` with them taken from ``x`` (insertion)."""
    n, _c, h, w = x.shape
    pixels = h * w
    rank = torch.empty((n, pixels), dtype=torch.long)
    rank.scatter_(1, torch.as_tensor(orders), torch.arange(pixels).expand(n, pixels).contiguous())
    rank = rank.view(n, 1, h, w).to(x.device)
    out = np.zeros((n, steps + 1), np.float32)
    for k in range(steps + 1):
        chosen = rank < round(k * pixels / steps)  # [N, 1, H, W]
        batch = torch.where(chosen, x, start) if insert else torch.where(chosen, start, x)
        logits = model(batch.contiguous(memory_format=torch.channels_last)).float()
        out[:, k] = torch.softmax(logits, dim=1)[:, 1].cpu().numpy()
    return out


def area(curves: np.ndarray) -> float:
    """Mean trapezoidal area of ``[N, steps + 1]`` curves over [0, 1]."""
    steps = curves.shape[1] - 1
    per_image = (curves[:, :-1] + curves[:, 1:]).sum(axis=1) / (2 * steps)
    return float(per_image.mean())


def faithfulness(
    model: ServingModel,
    images: np.ndarray,
    methods: Sequence[Method] = ("gradcam",),
    steps: int = 16,
    batch_size: int = 256,
    blur_sigma: float = 2.0,
    seed: int = 0,
) -> dict[str, Any]:
    """The report (see the module docstring) for uint8 NHWC ``images``; the map target is ``fake``."""
    rng = np.random.default_rng(seed)
    explainers = {m: CamExplainer(model.model, m, model.meta.mean, model.meta.std) for m in methods}
    kernel = 2 * int(np.ceil(3 * blur_sigma)) + 1
    results: dict[str, dict[str, list[np.ndarray]]] = {
        name: {"deletion": [], "insertion": []} for name in (*methods, "random")
    }
    for i in range(0, len(images), batch_size):
        chunk = images[i : i + batch_size]
        x = normalize_uint8(chunk, model.meta.mean, model.meta.std).to(model.device)
        start_del = torch.zeros_like(x)
        start_ins = TF.gaussian_blur(x, [kernel, kernel], [blur_sigma, blur_sigma])
        orders: dict[str, np.ndarray] = {
            m: _orders(ex.explain(x, "fake").maps, rng) for m, ex in explainers.items()
        }
        orders["random"] = _random_orders(len(chunk), x.shape[2] * x.shape[3], rng)
        for name, order in orders.items():
            results[name]["deletion"].append(_curves(model.model, x, start_del, order, steps, insert=False))
            results[name]["insertion"].append(_curves(model.model, x, start_ins, order, steps, insert=True))
        logger.info("faithfulness: %d/%d images", min(i + batch_size, len(images)), len(images))
    fractions = [round(k / steps, 6) for k in range(steps + 1)]
    report: dict[str, Any] = {
        "n": len(images),
        "steps": steps,
        "model_version": model.version,
        "target": "fake",
        "deletion_fill": "dataset mean colour",
        "insertion_start": f"gaussian blur sigma={blur_sigma}px",
        "fraction": fractions,
        "areas": {},
        "curves": {},
    }
    for name, parts in results.items():
        dele = np.concatenate(parts["deletion"])
        ins = np.concatenate(parts["insertion"])
        report["areas"][name] = {"deletion": round(area(dele), 5), "insertion": round(area(ins), 5)}
        report["curves"][name] = {
            "deletion": [round(float(v), 5) for v in dele.mean(axis=0)],
            "insertion": [round(float(v), 5) for v in ins.mean(axis=0)],
        }
    return report


def plot(report: dict[str, Any], path: str) -> None:
    """Deletion and insertion mean curves, one line per order, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=120)
    x = report["fraction"]
    for ax, kind, better in zip(axes, ("deletion", "insertion"), ("lower", "higher"), strict=True):
        for name, curves in report["curves"].items():
            a = report["areas"][name][kind]
            style = "--" if name == "random" else "-"
            ax.plot(x, curves[kind], style, label=f"{name} (area {a:.3f})")
        ax.set_title(f"{kind} ({better} area is more faithful)")
        ax.set_xlabel(f"fraction of pixels {'removed' if kind == 'deletion' else 'restored'}")
        ax.set_ylabel("mean p_fake")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"CAM faithfulness on {report['n']} FAKE validation images, model {report['model_version']}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
