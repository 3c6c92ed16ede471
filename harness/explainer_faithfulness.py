"""Deletion and insertion curves (Petsiuk et al., RISE, 2018): do the maps point at what drives p_fake?

For each image (FAKE images of the validation split by default) and each order of its deletion units,
CAM order (most salient first) or a random permutation:

* deletion: units are replaced, in that order, by the dataset mean colour (0 after normalisation) in
  ``steps`` equal chunks; p_fake is measured after each chunk. A faithful map makes p_fake fall fast:
  a smaller area under the curve.
* insertion: start from a blurred copy of the image (Gaussian, sigma ``blur_sigma`` px: the generator's
  high-frequency traces removed) and put the original units back in that order. A faithful map makes
  p_fake rise fast: a larger area.

A unit is a ``unit x unit`` patch (default 4 px: an 8 x 8 grid on a 32 px image) ranked by its mean map
value. Single pixels (``unit=1``) are also supported but are a biased test for this detector: random
single-pixel deletion sprinkles salt-and-pepper noise over the whole image, and high-frequency noise is
itself what the model reads as "real", so random order "wins" through the shape of its mask, not through
the pixels it removed (the mask-leakage problem of Rong et al., ROAD, 2022). Patches remove contiguous
regions in both orders, so the comparison is about where, not about how.

Baselines: ``rise`` is the one above (mean-colour deletion, blurred insertion start). For this detector
both of those fills look generated on their own (flat and smooth images score high p_fake), so removing
"evidence" with them adds evidence of the same kind and the curves move little. ``real`` replaces units
with the same units of a random REAL validation image (and inserts into one): the fill carries the other
class's evidence, equally in both orders, so the difference between CAM and random order is about where
the fake evidence sits. The report holds one entry per (unit, baseline) in ``by_config``.

Areas are trapezoids over the removed/inserted fraction in [0, 1], averaged over images.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from explainer.cam import CamExplainer, Method
from scorer.engine import ServingModel
from scorer.preprocess import normalize_uint8

logger = logging.getLogger(__name__)


def unit_ranks(scores: np.ndarray, unit: int, rng: np.random.Generator) -> torch.Tensor:
    """Per-pixel deletion rank ``[N, 1, H, W]`` (0 = first): units ranked by decreasing mean ``scores``
    (``[N, H, W]``), ties broken at random; all pixels of a unit share its rank."""
    n, h, w = scores.shape
    if h % unit or w % unit:
        raise ValueError(f"unit {unit} does not divide the {h}x{w} image")
    per_unit = F.avg_pool2d(torch.as_tensor(scores, dtype=torch.float64)[:, None], unit)[:, 0]
    gh, gw = per_unit.shape[1:]
    flat = per_unit.reshape(n, -1).numpy() + rng.random((n, gh * gw)) * 1e-9
    rank = np.argsort(np.argsort(-flat, axis=1, kind="stable"), axis=1)
    grid = torch.as_tensor(rank).view(n, 1, gh, gw)
    return grid.repeat_interleave(unit, dim=2).repeat_interleave(unit, dim=3)


@torch.inference_mode()
def _curves(
    model: torch.nn.Module,
    x: torch.Tensor,
    fill: torch.Tensor,
    ranks: torch.Tensor,
    steps: int,
    insert: bool,
) -> np.ndarray:
    """p_fake ``[N, steps + 1]``: ``x`` with its first k/steps units (by ``ranks``) taken from ``fill``
    (deletion), or ``fill`` with them taken from ``x`` (insertion)."""
    ranks = ranks.to(x.device)
    n_units = int(ranks[0].max()) + 1
    out = np.zeros((len(x), steps + 1), np.float32)
    for k in range(steps + 1):
        chosen = ranks < round(k * n_units / steps)  # [N, 1, H, W]
        batch = torch.where(chosen, x, fill) if insert else torch.where(chosen, fill, x)
        logits = model(batch.contiguous(memory_format=torch.channels_last)).float()
        out[:, k] = torch.softmax(logits, dim=1)[:, 1].cpu().numpy()
    return out


def area(curves: np.ndarray) -> float:
    """Mean trapezoidal area of ``[N, steps + 1]`` curves over [0, 1]."""
    steps = curves.shape[1] - 1
    per_image = (curves[:, :-1] + curves[:, 1:]).sum(axis=1) / (2 * steps)
    return float(per_image.mean())


def _summarise(results: dict[str, dict[str, list[np.ndarray]]]) -> tuple[dict[str, Any], dict[str, Any]]:
    areas: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    for name, parts in results.items():
        dele, ins = np.concatenate(parts["deletion"]), np.concatenate(parts["insertion"])
        areas[name] = {"deletion": round(area(dele), 5), "insertion": round(area(ins), 5)}
        curves[name] = {
            "deletion": [round(float(v), 5) for v in dele.mean(axis=0)],
            "insertion": [round(float(v), 5) for v in ins.mean(axis=0)],
        }
    return areas, curves


BASELINES = ("rise", "real")


def faithfulness(
    model: ServingModel,
    images: np.ndarray,
    methods: Sequence[Method] = ("gradcam",),
    steps: int = 16,
    units: Sequence[int] = (4,),
    baselines: Sequence[str] = ("rise",),
    donors: np.ndarray | None = None,
    batch_size: int = 256,
    blur_sigma: float = 2.0,
    seed: int = 0,
) -> dict[str, Any]:
    """The report (see the module docstring) for uint8 NHWC ``images``; the map target is ``fake``.

    One configuration per (unit, baseline); ``donors`` (uint8 NHWC REAL images) is needed for ``real``.
    """
    if "real" in baselines and (donors is None or len(donors) == 0):
        raise ValueError("the 'real' baseline needs donor images")
    rng = np.random.default_rng(seed)
    explainers = {m: CamExplainer(model.model, m, model.meta.mean, model.meta.std) for m in methods}
    kernel = 2 * int(np.ceil(3 * blur_sigma)) + 1
    size = model.input_size
    configs = [(u, b) for u in units for b in baselines]
    results: dict[tuple[int, str], dict[str, dict[str, list[np.ndarray]]]] = {
        c: {name: {"deletion": [], "insertion": []} for name in (*methods, "random")} for c in configs
    }
    for i in range(0, len(images), batch_size):
        chunk = images[i : i + batch_size]
        x = normalize_uint8(chunk, model.meta.mean, model.meta.std).to(model.device)
        fills: dict[
            str, tuple[torch.Tensor, torch.Tensor]
        ] = {}  # baseline -> (deletion fill, insertion start)
        if "rise" in baselines:
            fills["rise"] = (
                torch.zeros_like(x),
                TF.gaussian_blur(x, [kernel, kernel], [blur_sigma, blur_sigma]),
            )
        if "real" in baselines and donors is not None:
            picked = donors[rng.integers(0, len(donors), len(chunk))]
            real = normalize_uint8(picked, model.meta.mean, model.meta.std).to(model.device)
            fills["real"] = (real, real)
        scores: dict[str, np.ndarray] = {m: ex.explain(x, "fake").maps for m, ex in explainers.items()}
        scores["random"] = rng.random((len(chunk), size, size)).astype(np.float32)
        for u, b in configs:
            steps_u = min(steps, (size // u) ** 2)
            for name, s in scores.items():
                ranks = unit_ranks(s, u, rng)
                out = results[(u, b)][name]
                out["deletion"].append(_curves(model.model, x, fills[b][0], ranks, steps_u, False))
                out["insertion"].append(_curves(model.model, x, fills[b][1], ranks, steps_u, True))
        logger.info("faithfulness: %d/%d images", min(i + batch_size, len(images)), len(images))
    report: dict[str, Any] = {
        "n": len(images),
        "model_version": model.version,
        "arch": model.meta.arch,
        "target": "fake",
        "methods": list(methods),
        "baselines": {
            "rise": f"deletion fills the dataset mean colour; insertion starts from a gaussian blur "
            f"(sigma {blur_sigma} px)",
            "real": "deletion fills, and insertion starts from, a random REAL validation image",
        },
        "by_config": {},
    }
    for u, b in configs:
        areas, curves = _summarise(results[(u, b)])
        steps_u = min(steps, (size // u) ** 2)
        report["by_config"][f"{u}px/{b}"] = {
            "unit_px": u,
            "baseline": b,
            "steps": steps_u,
            "fraction": [round(k / steps_u, 6) for k in range(steps_u + 1)],
            "areas": areas,
            "curves": curves,
        }
    return report


def plot(report: dict[str, Any], path: str) -> None:
    """Deletion and insertion mean curves, one row per configuration, one line per order, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(report["by_config"].items())
    fig, axes = plt.subplots(len(configs), 2, figsize=(9, 3.2 * len(configs)), dpi=110, squeeze=False)
    for row, (name, cfg) in zip(axes, configs, strict=True):
        x = cfg["fraction"]
        for ax, kind, better in zip(row, ("deletion", "insertion"), ("lower", "higher"), strict=True):
            for order, curves in cfg["curves"].items():
                a = cfg["areas"][order][kind]
                ax.plot(x, curves[kind], "--" if order == "random" else "-", label=f"{order} (area {a:.3f})")
            ax.set_title(f"{name}: {kind} ({better} area = more faithful)", fontsize=9)
            ax.set_xlabel(f"fraction of the image {'removed' if kind == 'deletion' else 'restored'}")
            ax.set_ylabel("mean p_fake")
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(f"CAM faithfulness, {report['n']} FAKE validation images, model {report['model_version']}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
